"""A real SMTP server for the notification tests, on aiosmtpd.

Listens on 127.0.0.1:--port (0: the OS picks), saves every message it accepts as one
file in --out-dir (written under a temporary name, then renamed, so a reader never
sees half a message; names sort in order of arrival), and prints
`READY port=<port>` once it accepts connections. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

from aiosmtpd.controller import Controller


class SaveToDirectory:
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.count += 1
        name = f"{time.time_ns():020d}-{self.count:06d}.eml"
        tmp = os.path.join(self.out_dir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"X-Envelope-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(self.out_dir, name))
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    port = args.port
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    controller = Controller(SaveToDirectory(args.out_dir), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"READY port={port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
