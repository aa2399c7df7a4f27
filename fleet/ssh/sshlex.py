"""ssh_config lines as OpenSSH 9.x's ``readconf.c`` splits them: keyword, arguments, values.

- :func:`strdelim` and :func:`argv_split` are OpenSSH's two tokenisers (``misc.c``): the first
  takes the keyword (``Key value``, ``Key=value``, ``Key = value``); the second the arguments,
  with ``"..."``/``'...'`` quotes, ``\\`` escapes, and a ``#`` that starts a token ending the line
  (so ``HostName 10.0.0.5  # office`` is ``10.0.0.5`` while ``User a#b`` is ``a#b``).
- :data:`KEYWORDS` is every keyword some OpenSSH (or Debian's) ``ssh`` knows, with how many
  arguments it takes; an unknown one is an error, as for ``ssh`` (unless ``IgnoreUnknown``).
- the value parsers are OpenSSH's: ``a2port`` (a number or a service name), ``convtime``
  (``90``, ``1m``, ``1h30m``), flags and multi-state words (case-insensitive).
"""
from __future__ import annotations

import re
import socket
import sys

WS = " \t\r\n"

# Kinds: FLAG yes/no, TIME convtime, INT integer, ONE exactly one argument, ANY any number,
# CMD the rest of the line as written, IGNORE (deprecated/unsupported: accepted, ignored).
FLAG, TIME, INT, ONE, ANY, CMD, IGNORE = "flag", "time", "int", "one", "any", "cmd", "ignore"

_BY_KIND = {
    IGNORE: "protocol cipher fallbacktorsh globalknownhostsfile2 rhostsauthentication userknownhostsfile2 "
            "useroaming usersh useprivilegedport afstokenpassing kerberosauthentication kerberostgtpassing "
            "rsaauthentication rhostsrsaauthentication compressionlevel",
    FLAG: "forwardx11 forwardx11trusted exitonforwardfailure gatewayports passwordauthentication "
          "kbdinteractiveauthentication challengeresponseauthentication skeyauthentication tisauthentication "
          "hostbasedauthentication gssapiauthentication gssapidelegatecredentials batchmode checkhostip "
          "tcpkeepalive keepalive nohostauthenticationforlocalhost identitiesonly clearallforwardings "
          "enablesshkeysign hashknownhosts permitlocalcommand visualhostkey stdinnull forkafterauthentication "
          "proxyusefdpass canonicalizefallbacklocal streamlocalbindunlink enableescapecommandline "
          "gssapitrustdns gssapikeyexchange gssapirenewalforcesrekey",
    TIME: "connecttimeout forwardx11timeout serveraliveinterval",
    INT: "numberofpasswordprompts connectionattempts serveralivecountmax canonicalizemaxdots requiredrsasize",
    ONE: "kbdinteractivedevices xauthlocation user hostname hostkeyalias preferredauthentications bindaddress "
         "bindinterface pkcs11provider smartcarddevice securitykeyprovider identityfile identityfile2 "
         "certificatefile identityagent port ciphers macs kexalgorithms hostkeyalgorithms "
         "casignaturealgorithms hostbasedacceptedalgorithms hostbasedkeytypes pubkeyacceptedalgorithms "
         "pubkeyacceptedkeytypes loglevel syslogfacility escapechar compression verifyhostkeydns "
         "stricthostkeychecking addressfamily controlpath controlmaster controlpersist tunnel tunneldevice "
         "requesttty sessiontype streamlocalbindmask revokedhostkeys fingerprinthash updatehostkeys "
         "addkeystoagent forwardagent pubkeyauthentication dsaauthentication canonicalizehostname "
         "ignoreunknown gssapiclientidentity gssapiserveridentity gssapikexalgorithms tag",
    ANY: "remoteforward localforward dynamicforward permitremoteopen logverbose sendenv setenv "
         "canonicaldomains canonicalizepermittedcnames globalknownhostsfile userknownhostsfile ipqos rekeylimit "
         "channeltimeout versionaddendum refuseconnection warnweakcrypto obscurekeystroketiming "
         "protocolkeepalives setuptimeout host match include",
    CMD: "proxycommand proxyjump localcommand remotecommand knownhostscommand",
}
KEYWORDS: dict[str, str] = {k: kind for kind, names in _BY_KIND.items() for k in names.split()}
if sys.platform == "darwin":  # Apple's ssh knows it (and refuses nothing for it)
    KEYWORDS["usekeychain"] = IGNORE
ALIASES = {"identityfile2": "identityfile", "keepalive": "tcpkeepalive"}

STRICT = {"true": "yes", "yes": "yes", "false": "off", "no": "off", "off": "off", "ask": "ask",
          "accept-new": "accept-new"}
CANONICALIZE = {"true": "yes", "yes": "yes", "false": "no", "no": "no", "always": "always"}
_FLAGS = {"true": True, "yes": True, "false": False, "no": False}


class LexError(ValueError):
    """A line OpenSSH refuses; the message is OpenSSH's (without file and line)."""


def lower(s: str) -> str:
    """OpenSSH's ``lowercase()``: ASCII letters only."""
    return s.translate(_LOWER)


_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _skip_ws(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in WS:
        i += 1
    return s[i:]


def strdelim(s: str | None, split_equals: bool = True) -> tuple[str | None, str | None]:
    """OpenSSH's ``strdelim``: (next token, rest). A token is None (and rest None) past the end
    or for an unmatched quote."""
    if s is None:
        return None, None
    delims = WS + '"' + ("=" if split_equals else "")
    i = next((n for n, c in enumerate(s) if c in delims), -1)
    if i < 0:
        return s, None
    if s[i] == '"':
        t = s[:i] + s[i + 1:]
        j = t.find('"', i)
        if j < 0:
            return None, None
        return t[:j], _skip_ws(t[j + 1:])
    wspace = split_equals and s[i] == "="
    tok, rest = s[:i], _skip_ws(s[i + 1:])
    if split_equals and rest.startswith("=") and not wspace:
        rest = _skip_ws(rest[1:])
    return tok, rest


def argv_split(s: str, terminate_on_comment: bool = True) -> list[str]:
    """OpenSSH's ``argv_split``: quotes, ``\\`` escapes, ``#`` comments. LexError on an open quote."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] in " \t":
            i += 1
            continue
        if terminate_on_comment and s[i] == "#":
            break
        quote = ""
        arg: list[str] = []
        while i < n:
            c = s[i]
            if c == "\\" and i + 1 < n and (s[i + 1] in "'\"\\" or (not quote and s[i + 1] == " ")):
                i += 1
                arg.append(s[i])
            elif not quote and c in " \t":
                break
            elif not quote and c in "\"'":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                arg.append(c)
            i += 1
        if i >= n and quote:
            raise LexError("invalid quotes")
        out.append("".join(arg))
    return out


def split_line(raw: str) -> tuple[str, str] | None:
    """(lowercased keyword, rest of the line) as ``process_config_line`` takes them, or None
    for a line that says nothing (blank, comment). LexError for a keyword without argument."""
    line = raw.split("\0", 1)[0]
    end = len(line)
    while end > 1 and line[end - 1] in WS + "\f":
        end -= 1
    line = line[:end]
    if not line:
        return None
    kw, rest = strdelim(line)
    if kw == "":
        kw, rest = strdelim(rest)
    if not kw or kw.startswith("#"):
        return None
    kw = lower(kw)
    rest = _skip_ws(rest) if rest is not None else None
    if not rest:
        raise LexError(f'no argument after keyword "{kw}"')
    return kw, rest


# ------------------------------------------------------------------------------ values

_NUM = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


def a2port(s: str) -> int:
    """OpenSSH's ``a2port``: 0-65535 or a TCP service name (``ssh``); -1 if neither."""
    if re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+", s):
        v = int(s.strip())
        if 0 <= v <= 65535:
            return v
    try:
        return socket.getservbyname(s, "tcp") if s and "\0" not in s else -1
    except (OSError, UnicodeError):
        return -1


def convtime(s: str) -> int:
    """OpenSSH's ``convtime``: seconds for ``90``, ``90s``, ``1m``, ``1h30m``, ``2d``, ``1w``; -1 if bad."""
    mult = {"": 1, "s": 1, "S": 1, "m": 60, "M": 60, "h": 3600, "H": 3600, "d": 86400, "D": 86400,
            "w": 604800, "W": 604800}
    if not s:
        return -1
    total, p = 0, 0
    while p < len(s):
        m = _NUM.match(s, p)
        if not m:
            return -1
        secs = int(m.group().strip())
        p = m.end()
        unit = s[p] if p < len(s) else ""
        if unit not in mult or secs < 0:
            return -1
        p += 1 if unit else 0
        total += secs * mult[unit]
        if total > 2**31 - 1:
            return -1
    return total


def atoi(s: str) -> int:
    """OpenSSH's ``atoi_err``: a whole number (LexError otherwise)."""
    if not s:
        raise LexError("integer value missing.")
    if not re.fullmatch(r"[ \t\n\v\f\r]*[+-]?[0-9]+", s):
        raise LexError("integer value invalid.")
    v = int(s.strip())
    if not 0 <= v < 2**31:
        raise LexError(f"integer value too {'small' if v < 0 else 'large'}.")
    return v


def flag(s: str) -> bool:
    """yes/no/true/false, any case (LexError otherwise)."""
    v = _FLAGS.get(lower(s))
    if v is None:
        raise LexError(f'unsupported option "{s}".')
    return v


def multistate(s: str, table: dict[str, str]) -> str:
    """One of ``table``'s words, any case (LexError otherwise)."""
    v = table.get(lower(s))
    if v is None:
        raise LexError(f'unsupported option "{s}".')
    return v


def valid_domain(name: str) -> str:
    """OpenSSH's ``valid_domain`` (lowercased, trailing dot dropped); LexError if not a domain."""
    if not name:
        raise LexError("empty domain name")
    if not (name[0].isascii() and name[0].isalnum()):
        raise LexError(f'domain name "{name}" starts with invalid character')
    low = lower(name)
    if ".." in low:
        raise LexError(f'domain name "{low}" contains consecutive separators')
    if any(not (c.isascii() and (c.isalnum() or c in ".-_")) for c in low):
        raise LexError(f'domain name "{low}" contains invalid characters')
    return low[:-1] if low.endswith(".") else low


# ------------------------------------------------------------------------------ ProxyJump

class Jump:
    """One ProxyJump value: the last hop (``user``, ``host``, ``port``; -1 none given) and the
    hops before it (``extra``, as written), or ``none``."""

    def __init__(self, user: str | None, host: str, port: int, extra: str | None, none: bool = False) -> None:
        self.user, self.host, self.port, self.extra, self.none = user, host, port, extra, none

    def spec(self) -> str:
        """As ``ssh -G`` prints it."""
        bracket = ":" in self.host or all(c in "1234567890." for c in self.host)
        host = f"[{self.host}]" if bracket else self.host
        return (f"{self.extra}," if self.extra else "") + (f"{self.user}@" if self.user else "") + host + (
            f":{self.port}" if self.port > 0 else "")


def _clean(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") and len(host) > 1 else host


def _hpdelim(s: str) -> tuple[str, str | None, str] | None:
    """OpenSSH's ``hpdelim2``: (host, rest or None, delimiter)."""
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        i = end + 1
    else:
        i = next((n for n, c in enumerate(s) if c in ":/"), len(s))
    if i >= len(s):
        return s, None, ""
    if s[i] not in ":/":
        return None
    return s[:i], s[i + 1:], s[i]


def user_host_port(s: str) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` or ``ssh://[user@]host[:port]`` as ssh parses a ProxyJump hop."""
    if s.startswith("ssh://"):
        t = s[6:]
        user = None
        if "@" in t:
            user, t = t.split("@", 1)
            user = user.split(";", 1)[0]
            if not user or re.search(r"%(?![0-9A-Fa-f]{2})", user):
                raise LexError("bad user in URI")
            user = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), user.replace("+", " "))
        hp = _hpdelim(t)
        if hp is None or not hp[0]:
            raise LexError("no host")
        host, rest, delim = _clean(hp[0]), hp[1], hp[2]
        valid_domain(host)
        port = -1
        if rest:
            if delim == ":":
                p, _, path = rest.partition("/")
                if a2port(p) <= 0:
                    raise LexError("bad port")
                port, rest = a2port(p), path
            if rest:
                raise LexError("a path is not allowed")
        return user, host, port
    user = None
    if "@" in s:
        user, s = s.rsplit("@", 1)
        if not user:
            raise LexError("empty user")
    hp = _hpdelim(s)
    if hp is None or not hp[0]:
        raise LexError("no host")
    port = -1
    if hp[1]:
        port = a2port(hp[1])
        if port <= 0:
            raise LexError("bad port")
    return user, _clean(hp[0]), port


def parse_jump(s: str) -> Jump:
    """A ProxyJump value (OpenSSH's ``parse_jump``): every hop must parse; LexError if one does not."""
    if lower(s) == "none":
        return Jump(None, "none", 0, None, none=True)
    orig = s.split("#", 1)[0]
    cut = next((i for i in range(1, len(orig)) if orig[i].isspace()), len(orig))  # OpenSSH's rtrim
    orig = orig[:cut]
    hops = orig.split(",")
    try:
        parsed = [user_host_port(h) for h in reversed(hops)]
    except LexError:
        raise LexError(f'Invalid ProxyJump "{s}"') from None
    user, host, port = parsed[0]
    return Jump(user, host, port, orig.rsplit(",", 1)[0] if len(hops) > 1 else None)


__all__ = ["ALIASES", "ANY", "CANONICALIZE", "CMD", "FLAG", "IGNORE", "INT", "KEYWORDS", "Jump", "LexError", "ONE",
           "STRICT", "TIME", "a2port", "argv_split", "atoi", "convtime", "flag", "lower", "multistate",
           "parse_jump", "split_line", "strdelim", "user_host_port", "valid_domain"]
