"""Selectors: every form and every error."""
import pytest

from fleet.errors import SelectorError
from fleet.inventory import load_inventory_text
from fleet.inventory.select import names, select

INV = load_inventory_text("""
hosts:
  homedesktop-wsl: {auth: local, aliases: [wsl, local], tags: [linux]}
  macmini: {user: f, aliases: [mac], tags: [macos]}
  epyc6: {user: f, aliases: [epyc], tags: [linux, gpu]}
  epyc7: {user: f, tags: [linux, gpu]}
groups:
  gpu: [epyc6, epyc7]
  remote: [macmini, epyc6, epyc7]
""", "t.yaml")


@pytest.mark.parametrize("sel,expected", [
    ("epyc6", ["epyc6"]),
    ("epyc", ["epyc6"]),
    ("local", ["homedesktop-wsl"]),
    ("@gpu", ["epyc6", "epyc7"]),
    ("tag:linux", ["homedesktop-wsl", "epyc6", "epyc7"]),
    ("all", ["homedesktop-wsl", "macmini", "epyc6", "epyc7"]),
    ("epyc7,mac", ["macmini", "epyc7"]),                 # inventory order, not selector order
    ("@gpu,epyc6,epyc", ["epyc6", "epyc7"]),             # de-duplicated
    ("@gpu,!epyc6", ["epyc7"]),
    ("!epyc6,@gpu", ["epyc7"]),                          # exclusion applies after inclusions
    ("all,!@remote", ["homedesktop-wsl"]),
    ("all,!tag:gpu", ["homedesktop-wsl", "macmini"]),
    ("!mac", ["homedesktop-wsl", "epyc6", "epyc7"]),     # only exclusions: everything else
    (" @gpu , mac ", ["macmini", "epyc6", "epyc7"]),
])
def test_forms(sel, expected):
    assert names(select(INV, sel)) == expected


@pytest.mark.parametrize("sel,msg", [
    ("epyc8", "unknown host 'epyc8'.*did you mean 'epyc"),
    ("zzz", "unknown host 'zzz'.*known hosts"),
    ("@gpus", "unknown group '@gpus'.*did you mean '@gpu'"),
    ("@nope", "unknown group '@nope'.*groups: @gpu, @remote"),
    ("tag:lnux", "unknown tag 'tag:lnux'.*did you mean 'linux'"),
    ("", "empty host selector"),
    ("epyc6,,mac", "empty item"),
    ("!", "'!' with nothing after it"),
    ("@gpu,!epyc6,!epyc7", "matches no host"),
    ("!all", "matches no host"),
])
def test_errors(sel, msg):
    with pytest.raises(SelectorError, match=msg):
        select(INV, sel)
