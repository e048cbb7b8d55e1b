"""Hypervisor work as persisted, idempotent steps: `queue` (the jobs table: enqueue,
claim with a lease, renew, record), `steps` (what each step of each kind does), `runner`
(runs claimed jobs)."""
