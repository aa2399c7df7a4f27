"""Files that start ``fleet serve`` at login: a systemd user unit, or a launchd agent on macOS."""
from __future__ import annotations

import os
import shutil
import sys


def _fleet_bin() -> str:
    return shutil.which("fleet") or os.path.join(os.path.dirname(sys.executable), "fleet")


def systemd_unit(inventory: str | None) -> str:
    """The unit text: restarts on failure; the inventory named absolutely."""
    args = f" --inventory {os.path.abspath(inventory)}" if inventory else ""
    return ("[Unit]\nDescription=fleet serve: warm SSH connections and every agent followed\n\n"
            "[Service]\nType=simple\n"
            f"ExecStart={_fleet_bin()} serve{args}\n"
            "Restart=on-failure\nRestartSec=5\n"
            "# Slack and OpenCode secrets: put them in this file (KEY=value lines, chmod 600)\n"
            "EnvironmentFile=-%h/.config/fleet/env\n\n"
            "[Install]\nWantedBy=default.target\n")


def launchd_plist(inventory: str | None) -> str:
    """The launchd agent for macOS."""
    args = "".join(f"<string>{a}</string>" for a in [_fleet_bin(), "serve"] +
                   (["--inventory", os.path.abspath(inventory)] if inventory else []))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
            '<plist version="1.0"><dict><key>Label</key><string>dev.fleet.serve</string>'
            f'<key>ProgramArguments</key><array>{args}</array>'
            '<key>RunAtLoad</key><true/><key>KeepAlive</key><true/></dict></plist>\n')


def install(inventory: str | None, dry_run: bool = False) -> tuple[str, str, str]:
    """(path, text, how to enable it); writes the file unless ``dry_run``."""
    home = os.path.expanduser("~")
    if sys.platform == "darwin":
        path = os.path.join(home, "Library", "LaunchAgents", "dev.fleet.serve.plist")
        text, how = launchd_plist(inventory), f"enable it: launchctl load -w {path}"
    else:
        conf = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        path = os.path.join(conf, "systemd", "user", "fleet.service")
        text = systemd_unit(inventory)
        how = "enable it: systemctl --user daemon-reload && systemctl --user enable --now fleet.service"
    if not dry_run:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path, text, how
