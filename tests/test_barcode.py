"""The barcode scanner reader against a real pty, the way a USB-CDC scanner appears."""
import os
import pty
import queue
import time

from devices.barcode import BarcodeScanner, ScannerConfig
from devices.base import TokenSource


def test_lines_become_tokens_and_noise_is_dropped():
    master, slave = pty.openpty()
    import tty

    tty.setraw(slave)
    scanner = BarcodeScanner(ScannerConfig(port=os.ttyname(slave), max_len=32)).open()
    try:
        time.sleep(0.3)
        os.write(master, b"M1DOE/JOHN EVN123\r\n")
        os.write(master, b"\x01\x02garbage\x7f\n")
        os.write(master, b"X" * 100 + b"\n")
        os.write(master, b"VN-P-000042\r")
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            try:
                got.append(scanner.events.get(timeout=0.2))
            except queue.Empty:
                pass
        assert [e.text for e in got] == ["M1DOE/JOHN EVN123", "VN-P-000042"]
        assert all(e.source == TokenSource.BARCODE for e in got)
        assert scanner.dropped == 2
    finally:
        scanner.close()
        os.close(master)
        os.close(slave)


def test_a_missing_port_is_retried_not_fatal(tmp_path):
    scanner = BarcodeScanner(ScannerConfig(port=str(tmp_path / "ttyNONE"), reopen_max_s=0.2)).open()
    time.sleep(0.5)
    assert scanner._thread.is_alive()
    scanner.close()
