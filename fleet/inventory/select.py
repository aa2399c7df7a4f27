"""Host selection: a pure function from (inventory, selector text) to an ordered host list.

Forms: a name or alias, ``@group``, ``tag:NAME``, ``all``, comma lists of these, and
``!x`` (any of the forms) to exclude. Exclusions apply after every inclusion. The result
keeps inventory order and holds each host once. No I/O.
"""
from __future__ import annotations

from fleet.errors import SelectorError
from fleet.inventory.model import Host, Inventory, unknown_host
from fleet.names import did_you_mean

unknown_name_error = unknown_host  # the name this module gave it first


def _did_you_mean(word: str, choices: list[str]) -> str:
    hint = did_you_mean(word, choices, 0.5)
    return f"; {hint}" if hint else ""


def _term(inv: "Inventory", term: str, index: dict[str, str], selector: str) -> set[str]:
    if term == "all" or term == "*":
        return {h.name for h in inv.hosts}
    if term.startswith("@"):
        g = term[1:]
        if g not in inv.groups:
            hint = _did_you_mean(term, ["@" + x for x in inv.groups]) or (
                f"; groups: {', '.join('@' + x for x in inv.groups)}" if inv.groups else "; this inventory has no groups")
            raise SelectorError(f"unknown group '@{g}' in selector '{selector}'{hint}")
        return set(inv.groups[g])
    if term.startswith("tag:"):
        t = term[4:]
        tags = sorted({x for h in inv.hosts for x in h.tags})
        if t not in tags:
            hint = _did_you_mean(t, tags) or (f"; tags: {', '.join(tags)}" if tags else "; no host has tags")
            raise SelectorError(f"unknown tag 'tag:{t}' in selector '{selector}'{hint}")
        return {h.name for h in inv.hosts if t in h.tags}
    if term in index:
        return {index[term]}
    raise unknown_name_error(inv, term)


def select(inv: "Inventory", selector: str) -> list["Host"]:
    """Resolve ``selector`` against ``inv``: hosts in inventory order, each once.

    Raises :class:`SelectorError` for an empty selector, an unknown name, group or tag
    (with a suggestion), or a selection that ends up empty.
    """
    text = (selector or "").strip()
    if not text:
        raise SelectorError("empty host selector: write a host name, @group, tag:NAME or all")
    index = inv.names_index()
    include: set[str] = set()
    exclude: set[str] = set()
    saw_include = False
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            raise SelectorError(f"empty item in selector '{selector}': remove the extra comma")
        if term.startswith("!"):
            inner = term[1:].strip()
            if not inner:
                raise SelectorError(f"'!' with nothing after it in selector '{selector}': write !NAME")
            exclude |= _term(inv, inner, index, selector)
        else:
            saw_include = True
            include |= _term(inv, term, index, selector)
    if not saw_include:
        # Only exclusions: "everything but these", as Ansible reads a pattern of exclusions alone
        # ('!x' is 'all:!x' there). ClusterShell does not: its nodesets are read left to right, and
        # '!x' alone is a parse error in nodeset and clush; write '@all!x' there.
        include = {h.name for h in inv.hosts}
    chosen = [h for h in inv.hosts if h.name in include and h.name not in exclude]
    if not chosen:
        raise SelectorError(f"selector '{selector}' matches no host (everything it names is excluded)")
    return chosen


def names(hosts: list["Host"]) -> list[str]:
    """Canonical names of ``hosts``."""
    return [h.name for h in hosts]
