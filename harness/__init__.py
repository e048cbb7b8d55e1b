"""Real parts for the tests and the benchmarks alike: slapd, PostgreSQL, headless
Chromium, loopback relays. Development only: never installed, never imported by the
product (import-linter checks both)."""
