"""The product's shell and its core.

The top layer: `vdi.cli` (the `vdi` command), `vdi.serve` (running the web app and the
worker) and `vdi.wiring` (the composition root). The core, which every layer uses and
which imports none of them nor starlette, libvirt or ldap3: settings, domain types, the
desktop state machine (`vdi.desktops`), the database, models, migrations and audit.
import-linter checks both in `make lint`.
"""
