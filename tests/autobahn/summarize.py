"""Summarises an Autobahn fuzzingclient report and checks it against expected.txt.

Fails (exit 1) on any case whose behavior or close behavior is FAILED or UNIMPLEMENTED, and on
any NON-STRICT or INFORMATIONAL case that expected.txt does not list (so a new one is looked
at and explained in docs/conformance.md rather than passing silently). Prints one closing
line "N passed, M failed".
"""
import json
import sys


def main(index_path, expected_path):
    with open(index_path) as f:
        index = json.load(f)
    expected = {}
    with open(expected_path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                case, behavior = line.split()
                expected[case] = behavior
    failed = 0
    for agent in sorted(index):
        failed += check(agent, index[agent], expected)
    return 1 if failed else 0


def check(agent, results, expected):
    counts = {}
    bad = []
    for case, r in sorted(results.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
        b, bc = r["behavior"], r["behaviorClose"]
        counts[b] = counts.get(b, 0) + 1
        if b in ("FAILED", "UNIMPLEMENTED") or bc in ("FAILED", "UNIMPLEMENTED"):
            bad.append("%s: behavior %s, close %s" % (case, b, bc))
        elif b in ("NON-STRICT", "INFORMATIONAL") and expected.get(case) != b:
            bad.append("%s: %s, not listed in expected.txt (explain it in docs/conformance.md)" % (case, b))
    for case, b in sorted(expected.items()):
        if case in results and results[case]["behavior"] != b:
            print("note: %s is now %s (expected.txt says %s)" % (case, results[case]["behavior"], b))
    print("autobahn cases 1-10 (%s): " % agent + ", ".join("%s %d" % kv for kv in sorted(counts.items())))
    for line in bad:
        print("  " + line)
    print("autobahn %s: %d passed, %d failed" % (agent, len(results) - len(bad), len(bad)))
    return len(bad)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
