"""Public-key authentication in one round trip.

paramiko asks for the ``ssh-userauth`` service, waits for the server to accept it, then sends the
signed public-key request: two round trips. The SSH protocol processes a connection's messages in
order, and OpenSSH's sshd (as Go's x/crypto/ssh, which Tailscale SSH uses, and Dropbear) reads the
user-auth request after answering the service request, so fleet sends both at once: one round trip
less per connection. For RSA keys the signature algorithm depends on the server's
``server-sig-algs`` (sent after the key exchange): those keep paramiko's two steps.

To OpenSSH's sshd the first command's session channel is asked for right behind the signed
request (RFC 4252 section 5.1: what a client sends after the request that succeeded goes to
the service), another round trip less. Should that key be refused, sshd answers the early
request "unimplemented" and the channel is dropped; the next key is tried as before.
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
    """:meth:`paramiko.Transport.auth_publickey` with :class:`OneTripAuth` (same contract); the
    channel opened early, if any, is ``transport.fleet_early`` once the key is accepted."""
    import threading

    if not transport.active or not transport.initial_kex_done:
        raise paramiko.SSHException("No existing session")
    my_event = event if event is not None else threading.Event()
    handler = OneTripAuth(transport)
    transport.auth_handler = handler
    handler.auth_publickey(username, key, my_event)
    if event is not None:
        return []
    early = None
    if handler.early and not getattr(transport, "fleet_early_tried", False) and \
            str(getattr(transport, "remote_version", "")).startswith("SSH-2.0-OpenSSH"):
        transport.fleet_early_tried = True  # once per connection: the first key's attempt
        early = _open_session_unwaited(transport)
    try:
        result: list[str] = handler.wait_for_response(my_event)
    except BaseException:
        if early is not None:
            _drop(transport, early)
        raise
    if early is not None:
        transport.fleet_early = early
    return result


def _open_session_unwaited(transport: Any) -> Any:
    """Ask for a session channel without waiting for the answer (paramiko's ``open_channel``
    up to its wait); the channel, confirmed when its event is set."""
    import threading

    from paramiko.channel import Channel
    from paramiko.common import cMSG_CHANNEL_OPEN

    with transport.lock:
        window = transport._sanitize_window_size(None)
        packet = transport._sanitize_packet_size(None)
        chanid = transport._next_channel()
        m = Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string("session")
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        chan: Any = Channel(chanid)
        transport._channels.put(chanid, chan)
        transport.channel_events[chanid] = threading.Event()
        transport.channels_seen[chanid] = True
        chan._set_transport(transport)
        chan._set_window(window, packet)
    transport._send_user_message(m)
    return chan


def _drop(transport: Any, chan: Any) -> None:
    """Forget an early channel the server will never confirm (messages for it are ignored)."""
    with transport.lock:
        transport._channels.delete(chan.chanid)
        transport.channel_events.pop(chan.chanid, None)


def take_early(transport: Any, wait: float) -> Any:
    """The session channel opened with the authentication, once confirmed (up to ``wait``
    seconds: it comes right behind the success), else None."""
    chan = getattr(transport, "fleet_early", None)
    transport.fleet_early = None
    if chan is None:
        return None
    ev = transport.channel_events.get(chan.chanid)
    if ev is not None:
        ev.wait(wait)
    return chan if chan.active and not chan.closed else None


__all__ = ["OneTripAuth", "auth_publickey"]
