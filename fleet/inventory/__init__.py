"""The inventory: the model (:mod:`.model`) and its strict YAML loader (:mod:`.loader`, with the
checks on single YAML nodes in :mod:`.nodes`); selectors (:mod:`.select`); the seed's JSON
importer (:mod:`.importer`); exports for Ansible and ClusterShell (:mod:`.export`)."""
from fleet.inventory.loader import (
                     MAX_INVENTORY_BYTES,
                     MAX_NESTING,
                     default_inventory,
                     default_inventory_path,
                     load_inventory,
                     load_inventory_text,
                     max_nesting,
)
from fleet.inventory.model import AUTH_MODES, SSH_FIELDS, Host, Inventory, OpenCodeEndpoint, SlackSettings, unknown_host

__all__ = ["AUTH_MODES", "Host", "Inventory", "MAX_INVENTORY_BYTES", "MAX_NESTING", "OpenCodeEndpoint",
           "SSH_FIELDS", "SlackSettings", "default_inventory", "default_inventory_path", "load_inventory", "load_inventory_text", "max_nesting", "unknown_host"]
