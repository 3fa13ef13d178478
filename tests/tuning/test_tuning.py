"""tuning/plan, apply and check: plan values, check's exit codes, apply inside a network
namespace (net.* sysctls are per namespace, so the host is untouched) and revert, and
--dry-run for the global settings."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TUNING = os.path.join(ROOT, "tuning")
sys.path.insert(0, TUNING)
import ringtune  # noqa: E402


def run(cmd, ns=None):
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    return subprocess.run(cmd, capture_output=True, text=True)


def can_use_netns():
    return os.geteuid() == 0 and shutil.which("ip") and run(["ip", "netns", "list"]).returncode == 0


class PlanTest(unittest.TestCase):
    def test_values_for_a_million(self):
        p = ringtune.plan(1_000_000)
        s = {k: v for k, v, _ in p["sysctl"]}
        self.assertEqual(p["nofile"], 1_102_000)
        self.assertGreaterEqual(s["fs.nr_open"], p["nofile"])
        self.assertGreaterEqual(s["fs.file-max"], 2 * p["nofile"])
        self.assertEqual(s["net.core.somaxconn"], 65535)
        low, pressure, high = map(int, s["net.ipv4.tcp_mem"].split())
        self.assertEqual(high, 1_000_448)  # 25% of 1M connections x 16 KiB, in 4 KiB pages, rounded up
        self.assertTrue(low < pressure < high)
        self.assertEqual(p["memory_bytes"], 1_000_000 * (4300 + 146))

    def test_memory_caps_tcp_mem_and_warns(self):
        p = ringtune.plan(1_000_000, memory_gb=4)
        high = int(dict((k, v) for k, v, _ in p["sysctl"])["net.ipv4.tcp_mem"].split()[2])
        self.assertEqual(high, ringtune.round_up(4 * (1 << 30) * 0.4 / 4096, 1024))
        self.assertIn("WARNING", ringtune.render_plan(p))
        self.assertNotIn("WARNING", ringtune.render_plan(ringtune.plan(10_000, memory_gb=4)))

    def test_formats(self):
        out = run([os.path.join(TUNING, "plan"), "--connections", "50000", "--format", "sysctl"])
        self.assertEqual(out.returncode, 0)
        keys = [l.split(" = ")[0] for l in out.stdout.splitlines() if " = " in l and not l.startswith("#")]
        self.assertIn("net.core.somaxconn", keys)
        self.assertIn("fs.nr_open", keys)
        j = json.loads(run([os.path.join(TUNING, "plan"), "--connections", "50000", "--format", "json"]).stdout)
        self.assertEqual(j["nofile"], 57_000)  # 50,000 x 1.1 + 1,024, rounded up to 1,000
        bad = run([os.path.join(TUNING, "plan"), "--connections", "0"])
        self.assertEqual(bad.returncode, 2)
        self.assertIn("--connections must be at least 1", bad.stderr)


class TemplatesTest(unittest.TestCase):
    def test_checked_in_templates_match_the_plan(self):
        for fmt, name in (("sysctl", "99-ringcast.conf"), ("limits", "ringcast-limits.conf")):
            out = run([os.path.join(TUNING, "plan"), "--connections", "1000000", "--format", fmt])
            with open(os.path.join(TUNING, name)) as f:
                self.assertEqual(f.read(), out.stdout,
                                 "tuning/%s drifted: tuning/plan --connections 1000000 --format %s > tuning/%s" % (name, fmt, name))


class CheckTest(unittest.TestCase):
    def test_shortfalls_are_listed_and_exit_1(self):
        p = ringtune.plan(1_000_000)
        short = ringtune.shortfalls(p, "all", nofile_soft=1000)
        self.assertIn("nofile (this shell)", [k for k, _, _ in short])
        out = run([os.path.join(TUNING, "check"), "--connections", "1000000"])
        live = int(ringtune.read_live("net.core.somaxconn"))
        if live < 65535 or short:
            self.assertEqual(out.returncode, 1, out.stdout)
            self.assertIn("SHORT ", out.stdout)
            self.assertIn("shortfall(s) for 1000000 connections", out.stdout)
        # The passing side (exit 0) is shown in a namespace after apply, below.


@unittest.skipUnless(can_use_netns(), "needs root and ip netns")
class ApplyInNamespaceTest(unittest.TestCase):
    def setUp(self):
        self.ns = "rctune%d" % os.getpid()
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.root = tempfile.mkdtemp()

    def tearDown(self):
        subprocess.run(["ip", "netns", "del", self.ns])
        shutil.rmtree(self.root, ignore_errors=True)

    def sysctl(self, key):
        return run(["sysctl", "-n", key], ns=self.ns).stdout.strip()

    def test_apply_then_revert(self):
        host_before = ringtune.read_live("net.core.somaxconn")
        ns_before = self.sysctl("net.core.somaxconn")
        apply = [os.path.join(TUNING, "apply"), "--connections", "100000", "--scope", "net", "--root", self.root]
        check = [os.path.join(TUNING, "check"), "--connections", "100000", "--scope", "net"]
        self.assertEqual(run(check, ns=self.ns).returncode, 1)
        out = run(apply, ns=self.ns)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("set net.core.somaxconn = 65535", out.stdout)
        conf = os.path.join(self.root, "etc/sysctl.d/99-ringcast.conf")
        self.assertIn("net.core.somaxconn = 65535", open(conf).read())
        self.assertNotIn("fs.nr_open", open(conf).read(), "--scope net writes net.* only")
        self.assertEqual(self.sysctl("net.core.somaxconn"), "65535")
        self.assertEqual(ringtune.read_live("net.core.somaxconn"), host_before, "the host is untouched")
        self.assertEqual(run(check, ns=self.ns).returncode, 0)
        # Idempotent: a second apply changes nothing.
        again = run(apply, ns=self.ns)
        self.assertIn("unchanged", again.stdout)
        self.assertNotIn("set net.", again.stdout)
        # Revert restores the values from before the first apply and removes the file.
        rev = run(apply + ["--revert"], ns=self.ns)
        self.assertEqual(rev.returncode, 0, rev.stdout + rev.stderr)
        self.assertEqual(self.sysctl("net.core.somaxconn"), ns_before)
        self.assertFalse(os.path.exists(conf))
        self.assertEqual(run(check, ns=self.ns).returncode, 1)

    def test_a_changed_file_is_backed_up_and_restored(self):
        conf = os.path.join(self.root, "etc/sysctl.d/99-ringcast.conf")
        os.makedirs(os.path.dirname(conf))
        with open(conf, "w") as f:
            f.write("# the operator's own\n")
        apply = [os.path.join(TUNING, "apply"), "--connections", "5000", "--scope", "net", "--root", self.root]
        out = run(apply, ns=self.ns)
        self.assertIn("backup", out.stdout)
        run(apply + ["--revert"], ns=self.ns)
        self.assertEqual(open(conf).read(), "# the operator's own\n")


class DryRunTest(unittest.TestCase):
    def test_dry_run_changes_nothing(self):
        root = tempfile.mkdtemp()
        try:
            before = {k: ringtune.read_live(k) for k, _, _ in ringtune.plan(2_000_000)["sysctl"]}
            out = run([os.path.join(TUNING, "apply"), "--connections", "2000000", "--dry-run", "--root", root])
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("would write", out.stdout)
            self.assertIn("limits.d/ringcast.conf", out.stdout)
            self.assertIn("would set fs.nr_open", out.stdout)
            self.assertEqual(os.listdir(root), [])
            after = {k: ringtune.read_live(k) for k in before}
            self.assertEqual(before, after)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
