"""fleet's task collection: the ``fleet`` command and, in a checkout, ``inv`` (``tasks.py``
imports it) serve the same tasks with the same flags, settings and messages.

Heavy imports (fabric, paramiko, httpx, slack-sdk) happen inside the tasks, so ``--list`` stays
fast. The tasks live by plane: :mod:`fleet.cli.ssh_tasks`, :mod:`fleet.cli.agent_tasks`,
:mod:`fleet.cli.admin_tasks`.
"""
from __future__ import annotations

from dataclasses import asdict

from invoke import Collection

from fleet.cli import admin_tasks as adm
from fleet.cli import agent_tasks as agt
from fleet.cli import serve_tasks as svt
from fleet.cli import ssh_tasks as sst
from fleet.settings import Settings

ns = Collection()
for _t in (sst.preflight, sst.fanout, sst.retry, sst.blow_away, agt.dispatch, agt.wait, agt.abort, agt.approve,
           agt.deny, agt.answer, agt.sessions, agt.watch, agt.listen, agt.status, agt.teardown, adm.mcp,
           adm.settings_show, svt.serve):
    ns.add_task(_t)
for _name, _tasks in (("inventory", {"check": adm.inventory_check, "show": adm.inventory_show,
                                     "import": adm.inventory_import, "export": adm.inventory_export}),
                      ("lab", {"up": adm.lab_up, "down": adm.lab_down}),
                      ("audit", {"replay": adm.audit_replay, "tail": adm.audit_tail, "show": adm.audit_show}),
                      ("worktrees", {"list": sst.worktrees_list, "remove": sst.worktrees_remove}),
                      ("token", {"list": adm.token_list, "revoke": adm.token_revoke}),
                      ("service", {"install": svt.service_install})):
    _sub = Collection(_name)
    for _n, _t in _tasks.items():
        _sub.add_task(_t, name=_n, default=(_name, _n) == ("worktrees", "list"))
    ns.add_collection(_sub)

# Every key is None here: fleet's settings come from fleet.settings.load_settings (one loader
# for every face), not from Invoke's own config merging.
ns.configure({"fleet": {k: None for k in asdict(Settings())}})
