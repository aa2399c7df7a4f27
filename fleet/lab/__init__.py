"""The local lab: real OpenSSH sshd hosts (and real OpenCode agents with a stand-in model) on
loopback, looking like real machines. A product feature (``fleet lab.up``, ``make demo``) and the
test bed of the suite and the benchmarks.

- :mod:`fleet.lab.base`: what a lab is (hosts, processes) and helpers;
- :mod:`fleet.lab.hosts`: the sshd hosts, their ssh_config, known_hosts and inventory;
- :mod:`fleet.lab.agents`: ``opencode serve`` per host; :mod:`fleet.lab.fakellm`: the stand-in model;
- :mod:`fleet.lab.demo`: ``make demo``.
"""
from fleet.errors import AgentError, LabError
from fleet.lab.base import Blackholes, Lab, LabHost, _pid_alive, free_ports, host_address, state_file
from fleet.lab.hosts import find_sshd, lab_down, lab_up, write_inventory, write_ssh_config

__all__ = ["AgentError", "Blackholes", "Lab", "LabError", "LabHost", "_pid_alive", "find_sshd", "free_ports", "host_address",
           "lab_down", "lab_up", "state_file", "write_inventory", "write_ssh_config"]
