#!/usr/bin/env python3
"""How long `rw` is unusable when the supervisor is killed with SIGKILL (its keeper restarts it).

Usage: supervisor_kill_probe.py RW_PORT SUPERVISOR_PID_FILE ROUNDS [mariadb]

Each round kills the supervisor named in the pid file, then connects to the rw port every
millisecond until a connection gets the server's first answer (PostgreSQL: the reply to an
SSLRequest; MariaDB: its greeting). Prints per round: milliseconds from the kill to that answer,
connections refused, connections dropped. Only 127.0.0.1 is contacted. Keep rounds 10 s apart to
stay clear of the keeper's back-off (more than 3 crashes within 10 s of their starts).
"""
import os
import signal
import socket
import struct
import sys
import time

port, pid_file, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
mariadb = len(sys.argv) > 4 and sys.argv[4] == "mariadb"


def answered():
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        if mariadb:
            return len(s.recv(1)) == 1
        s.sendall(struct.pack("!ii", 8, 80877103))
        return s.recv(1) in (b"N", b"S")


results = []
for _ in range(rounds):
    time.sleep(1.5)
    os.kill(int(open(pid_file).read().strip()), signal.SIGKILL)
    killed, refused, dropped = time.monotonic(), 0, 0
    while True:
        try:
            if answered():
                break
            dropped += 1
        except ConnectionRefusedError:
            refused += 1
        except OSError:
            dropped += 1
        time.sleep(0.001)
    results.append((round((time.monotonic() - killed) * 1000, 1), refused, dropped))
print("(ms until rw answered, refused, dropped):", results)
