"""Print a rig's workers (name:state:restarts) and streams (name:generation), from
``rigpipe status --json`` on stdin: .ci/run compares them before and after the suite."""

import json
import sys

status = json.load(sys.stdin)
print(" ".join(f"{w['name']}:{w['state']}:{w['restarts']}" for w in status["workers"]))
print(" ".join(f"{s['stream']}:{s['generation']}" for s in status["streams"]))
