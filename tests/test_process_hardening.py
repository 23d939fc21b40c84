"""The daemon's memory holds clear templates and keys: a process started through
gate.process_hardening writes no core file and cannot be dumped or attached to."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import os, resource, sys
    sys.path.insert(0, sys.argv[1])
    from gate.process_hardening import disable_core_dumps, is_dumpable
    before = (is_dumpable(), os.stat("/proc/self/status").st_uid)
    disable_core_dumps()
    limits = [l for l in open("/proc/self/limits") if l.startswith("Max core file size")][0].split()
    status_owner = os.stat("/proc/self/status").st_uid  # a non-dumpable process's /proc files belong to root
    grandchild = os.popen("grep 'Max core file size' /proc/self/limits").read().split()
    print(before[0], before[1], is_dumpable(), status_owner, limits[4], limits[5], grandchild[4], grandchild[5])
""")


def test_a_process_started_through_it_is_not_dumpable_and_has_no_core_limit():
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO)], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    was_dumpable, uid_before, dumpable, status_owner, soft, hard, child_soft, child_hard = out
    assert was_dumpable == "True" and int(uid_before) == os.getuid()
    assert dumpable == "False"
    if os.getuid() != 0:  # /proc/self/status now owned by root: the kernel's mark of "not dumpable"
        assert int(status_owner) == 0
    assert (soft, hard) == ("0", "0") and (child_soft, child_hard) == ("0", "0")  # inherited by what it starts
