"""Public-key authentication in one round trip.

paramiko asks for the ``ssh-userauth`` service, waits for the server to accept it, then sends the
signed public-key request: two round trips. The SSH protocol processes a connection's messages in
order, and OpenSSH's sshd (as Go's x/crypto/ssh, which Tailscale SSH uses, and Dropbear) reads the
user-auth request after answering the service request, so fleet sends both at once: one round trip
less per connection. For RSA keys the signature algorithm depends on the server's
``server-sig-algs`` (sent after the key exchange): those keep paramiko's two steps.
"""
from __future__ import annotations

from typing import Any

import paramiko
from paramiko.auth_handler import AuthHandler
from paramiko.common import DEBUG, cMSG_USERAUTH_REQUEST
from paramiko.message import Message


class OneTripAuth(AuthHandler):
    """paramiko's client-side auth handler, sending a public-key request with its service request."""

    early = False  # the user-auth request went with the service request

    def _request_auth(self) -> None:
        super()._request_auth()  # type: ignore[misc]
        if self.auth_method == "publickey" and not isinstance(self.private_key, paramiko.RSAKey):
            self.early = True
            self.transport._send_message(self._publickey_request())  # type: ignore[attr-defined]

    def _publickey_request(self) -> Message:
        """The signed request paramiko sends once the service is accepted (its own code's steps)."""
        key = self.private_key
        assert key is not None
        m = Message()
        m.add_byte(cMSG_USERAUTH_REQUEST)
        m.add_string(self.username or "")
        m.add_string("ssh-connection")
        m.add_string("publickey")
        m.add_boolean(True)
        key_type, bits = self._get_key_type_and_bits(key)  # type: ignore[attr-defined]
        algorithm = self._finalize_pubkey_algorithm(key_type)  # type: ignore[attr-defined]
        m.add_string(algorithm)
        m.add_string(bits)
        blob = self._get_session_blob(key, "ssh-connection", self.username, algorithm)  # type: ignore[attr-defined]
        m.add_string(key.sign_ssh_data(blob, algorithm))
        return m

    def _parse_service_accept(self, m: Message) -> None:
        if self.early:
            self._log(DEBUG, "userauth is OK (the request went with it)")  # type: ignore[attr-defined]
            return
        super()._parse_service_accept(m)  # type: ignore[misc]


def auth_publickey(transport: Any, username: str, key: Any, event: Any = None) -> list[str]:
    """:meth:`paramiko.Transport.auth_publickey` with :class:`OneTripAuth` (same contract)."""
    import threading

    if not transport.active or not transport.initial_kex_done:
        raise paramiko.SSHException("No existing session")
    my_event = event if event is not None else threading.Event()
    transport.auth_handler = OneTripAuth(transport)
    transport.auth_handler.auth_publickey(username, key, my_event)
    if event is not None:
        return []
    result: list[str] = transport.auth_handler.wait_for_response(my_event)
    return result


__all__ = ["OneTripAuth", "auth_publickey"]
