"""The admin dashboard (issue 6): what the agents hold right now, and the operator's controls.

    /admin                       queue of pending calls (live), filters, search, actions
    /admin/sessions/{sid}        a session's timeline: transcript chunks and calls on one axis
    /admin/health                held / prepared transactions, outbox, heartbeats, speculation
    /v1/admin/queue|health|events|me, /v1/admin/sessions/{sid}/timeline    (admin keys)
    /v1/admin/calls/{id}/retry-compensation|extend-ttl, /v1/admin/turns/{id}/extend-ttl
    /v1/sessions/{sid}/transcript                                    (the agent appends)

Modules: ``router`` (the routes, bundled), ``pages`` (HTML shells and fragments, Jinja2),
``queue``, ``health``, ``timeline``, ``events`` (the tenant-wide stream), ``actions`` (operator
writes through the ledger), ``transcript``, ``redact``, ``models`` (migration 0004),
``screenshots`` (``make screenshots``). A tenant admin sees its own tenant only
(``dependencies.visible_tenants``); an app key gets 403 everywhere here.
"""
