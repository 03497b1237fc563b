"""Which lists exist: the on-disk check for Mailman 2 and Mailman 3.

Only names that passed address.is_list_name() and address.is_domain() reach
a path here.  "Not there" and "cannot look" are different answers: the
first is an unknown list, the second a local fault (the mail stays queued).
"""

import os
import stat

from .address import is_list_name

# Mailman 2's own test (Utils.list_exists): any of these in lists/NAME/
MAILMAN2_CONFIGS = ("config.pck", "config.pck.last", "config.db", "config.db.last")


class RegistryError(Exception):
    """The list directory could not be examined (permissions, I/O)."""


def _exists(path):
    """True/False for a path; RegistryError when the answer is unknowable."""
    try:
        os.stat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise RegistryError("cannot examine %s: %s" % (path, exc.strerror)) from None


class _ListsDir:
    """A lists directory, checked once: it must exist and be searchable."""

    def __init__(self, lists_dir):
        self.lists_dir = lists_dir
        self._checked = False

    def _check(self):
        if self._checked:
            return
        try:
            is_dir = stat.S_ISDIR(os.stat(self.lists_dir).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_dir = False
        except OSError as exc:
            raise RegistryError("cannot examine lists directory %s: %s"
                                % (self.lists_dir, exc.strerror)) from None
        if not is_dir:
            raise RegistryError("lists directory %s does not exist" % self.lists_dir)
        if not os.access(self.lists_dir, os.X_OK):
            raise RegistryError("lists directory %s is not searchable by uid %d"
                                % (self.lists_dir, os.geteuid()))
        self._checked = True

    def entries(self):
        """Every name in the lists directory (RegistryError when unreadable)."""
        self._check()
        try:
            return sorted(os.listdir(self.lists_dir))
        except OSError as exc:
            raise RegistryError("cannot list %s: %s"
                                % (self.lists_dir, exc.strerror)) from None


class Mailman2Lists(_ListsDir):
    """A Mailman 2 list exists when LISTS_DIR/<name>/ holds config.pck,
    config.pck.last, config.db or config.db.last (as Mailman 2 decides)."""

    def _has_config(self, name):
        base = os.path.join(self.lists_dir, name)
        return any(_exists(os.path.join(base, config)) for config in MAILMAN2_CONFIGS)

    def exists(self, target):
        self._check()
        return self._has_config(target.name)

    def names(self):
        """Every list (a safe name with a config file), sorted.

        RegistryError whenever an entry cannot be examined: no answer is
        better than a wrong one.  Entries that are no safe list name are
        never looked into (see survey()).
        """
        return self.survey()[0]

    def survey(self):
        """(list names, [(entry, why skipped)]) of the lists directory."""
        names, skipped = [], []
        for entry in self.entries():
            if not is_list_name(entry):
                skipped.append((entry, "not a list name mm-handler can route"))
            elif self._has_config(entry):
                names.append(entry)
            else:
                skipped.append((entry, "not a list"))
        return names, skipped


class Mailman3Lists(_ListsDir):
    """Mailman 3 keeps VAR_DIR/lists/<name>.<domain> per list (the list id).

    This is a fast check only: the LMTP server's RCPT reply is the final word
    (``test.lists@example.test`` and ``test@lists.example.test`` share a
    directory; a failed ``mailman create`` can leave an orphan).
    """

    def __init__(self, var_dir):
        super().__init__(os.path.join(var_dir, "lists"))

    def exists(self, target):
        self._check()
        entry = target.name + "." + target.domain
        if len(entry) > 255:    # NAME_MAX: no such directory can exist
            return False
        return _exists(os.path.join(self.lists_dir, entry))

    def names(self):
        """The list ids (``<name>.<domain>`` directories), sorted.

        A directory left behind by a failed ``mailman create`` is among
        them: only Mailman's list manager knows better.
        """
        return [entry for entry in self.entries() if not entry.startswith(".")]


class NoLists:
    """No on-disk view (Mailman 3 without var_dir): LMTP decides alone."""

    def exists(self, target):
        return None


def candidates(readings, lists):
    """The readings a delivery may try, in the order to try them.

    With an on-disk view: the first reading whose list exists (a list named
    like the whole local part wins), or none.  Without one (Mailman 3, no
    var_dir): every reading, the whole name first; the LMTP server is asked
    each in turn and has the last word, so a list really named
    ``news-admin`` or ``owner-foo`` is never taken for another list's
    address.
    """
    for target in readings:
        found = lists.exists(target)
        if found is None:
            return list(readings)
        if found:
            return [target]
    return []


def for_settings(settings):
    if settings.get("mm-handler", "backend") == "mailman2":
        return Mailman2Lists(settings.get("mailman2", "lists_dir"))
    var_dir = settings.get("mailman3", "var_dir")
    return Mailman3Lists(var_dir) if var_dir else NoLists()
