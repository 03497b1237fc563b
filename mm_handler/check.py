"""``mm-handler --check``: tell a person what the configuration amounts to.

Not on the delivery path, so it may take its time: it lists the lists,
greets every LMTP server and looks at the wrapper.  Exit 0 when delivery
could work, 78 (EX_CONFIG) when something needs fixing.
"""

import os
import sys

from . import registry
from .status import EX_CONFIG, EX_OK


def run_check(settings, out=sys.stdout):
    problems = []

    def say(text):
        out.write(text + "\n")

    def problem(text):
        problems.append(text)
        say("FAIL " + text)

    backend = settings.get("mm-handler", "backend")
    say("config %s: OK" % settings.path)
    say("backend: %s" % backend)
    say("approved actions: %s" % " ".join(
        sorted(settings.get("mm-handler", "approved_actions"))))
    say("unknown lists: %s; unapproved actions: %s" % (
        settings.get("mm-handler", "unknown_list"),
        settings.get("mm-handler", "unapproved_action")))
    lists = registry.for_settings(settings)
    if isinstance(lists, registry.NoLists):
        say("lists: not checked on disk ([mailman3] var_dir is empty); "
            "the LMTP server decides")
    else:
        try:
            names = lists.names()
            say("lists in %s: %d%s" % (lists.lists_dir, len(names),
                                       (": " + " ".join(names[:50])) if names else ""))
        except (registry.RegistryError, OSError) as exc:
            problem("lists: %s" % exc)
    if backend == "mailman2":
        wrapper = settings.get("mailman2", "wrapper")
        if os.access(wrapper, os.X_OK):
            say("wrapper %s: executable" % wrapper)
        else:
            problem("wrapper %s: missing or not executable by uid %d"
                    % (wrapper, os.geteuid()))
    else:
        from . import lmtp
        for endpoint in settings.get("mailman3", "lmtp"):
            name = lmtp.describe_endpoint(endpoint)
            try:
                conn = lmtp.Connection(endpoint, min(
                    10.0, settings.get("mailman3", "timeout")))
                try:
                    greeting = conn.reply()
                finally:
                    conn.close()
                if greeting.code == 220:
                    say("LMTP %s: reachable: %s" % (name, greeting))
                else:
                    problem("LMTP %s: answered %s" % (name, greeting))
            except lmtp.ExchangeError as exc:
                problem("LMTP %s: not reachable: %s" % (name, exc))
    say("result: %s" % ("OK" if not problems else
                        "%d problem%s" % (len(problems), "s" * (len(problems) > 1))))
    return EX_OK if not problems else EX_CONFIG
