"""MPI's rsh agent without ssh: asks this node's trainyard agent to run a command on another node of the gang.

Open MPI runs `AGENT HOST COMMAND...` to start its daemon (orted) on HOST. This program hands
HOST and the command to the local node agent through a unix socket (TRAINYARD_RSH_SOCKET); the
agent forwards them over Redis to HOST's agent, which runs the command inside the gang's part
there. The command's exit status comes back and becomes ours, as with ssh; when we are killed
the socket closes and the remote command is killed too.

Standard library only, and no trainyard imports: this file is copied next to the socket and may
run inside a job's container.
"""

from __future__ import annotations

import json
import os
import socket
import sys

SOCKET_ENV = "TRAINYARD_RSH_SOCKET"
AGENT_FAILED = 255  # what ssh exits with when it, not the remote command, failed


def parse(args: list[str]) -> tuple[str, str]:
    """(host, command line) from ssh-style arguments: options first, then the host, then the command."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest.pop(0)
    if not rest:
        raise ValueError("usage: rsh-agent HOST COMMAND...")
    host, words = rest[0], rest[1:]
    return host, " ".join(words).strip()


def read_reply(sock: socket.socket) -> dict[str, object]:
    buffer = b""
    while b"\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buffer += chunk
    if not buffer.strip():
        return {"error": "the trainyard node agent closed the connection", "exit": AGENT_FAILED}
    reply: dict[str, object] = json.loads(buffer.split(b"\n", 1)[0])
    return reply


def main(args: list[str]) -> int:
    try:
        host, command = parse(args)
    except ValueError as exc:
        print(f"trainyard rsh agent: {exc}", file=sys.stderr)
        return AGENT_FAILED
    path = os.environ.get(SOCKET_ENV)
    if not path:
        print(f"trainyard rsh agent: {SOCKET_ENV} is not set", file=sys.stderr)
        return AGENT_FAILED
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(json.dumps({"host": host, "command": command}).encode() + b"\n")
            reply = read_reply(sock)
        except OSError as exc:
            reply = {"error": f"cannot reach the trainyard node agent: {exc}", "exit": AGENT_FAILED}
    if reply.get("error"):
        print(f"trainyard rsh agent: {host}: {reply['error']}", file=sys.stderr)
    code = reply.get("exit", AGENT_FAILED)
    return code if isinstance(code, int) else AGENT_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
