"""The operations console: the fleet, each lane and the received audit on web pages, for central ops.

Served by `gate-central --config central.toml console` (console.server), from the same
database as the central nodes (SQLite or PostgreSQL, through sync.central_db), so it may run on
a node or on a machine of its own and shares nothing else with them. It only reads what the
central already holds (gate health, received audit, chain alarms) and writes its own tables
(schema version 6, console.store): accounts, sessions, its hash-chained ops audit log and
alarm acknowledgements. It has no path to a gate: an acknowledgement is recorded for the
operations centre, it does not reset a lane (ground staff do that at the lane with gatectl).

Rooms inside:
- store: accounts (argon2id), sessions, login lock-out, the ops audit log, acknowledgements
- views: the figures each page shows, computed from the central's tables
- svg: the lane page's plot, drawn server-side as inline SVG (no script, no front-end build)
- app: the Starlette application (pages, login, CSRF, roles, export)
- server: the bind rules (no plain HTTP beyond loopback) and uvicorn
"""
