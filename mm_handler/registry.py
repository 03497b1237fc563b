"""Which lists exist: the on-disk check for Mailman 2 and Mailman 3.

Only names that passed address.is_list_name() and address.is_domain() reach
a path here.  "Not there" and "cannot look" are different answers: the
first is an unknown list, the second a local fault (the mail stays queued).
"""

import os


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
        if not os.path.isdir(self.lists_dir):
            raise RegistryError("lists directory %s does not exist" % self.lists_dir)
        if not os.access(self.lists_dir, os.X_OK):
            raise RegistryError("lists directory %s is not searchable by uid %d"
                                % (self.lists_dir, os.geteuid()))
        self._checked = True


class Mailman2Lists(_ListsDir):
    """A Mailman 2 list exists when LISTS_DIR/<name>/config.pck (or .db) does."""

    def _has_config(self, name):
        base = os.path.join(self.lists_dir, name)
        return (_exists(os.path.join(base, "config.pck"))
                or _exists(os.path.join(base, "config.db")))

    def exists(self, target):
        self._check()
        return self._has_config(target.name)

    def names(self):
        self._check()
        return sorted(name for name in os.listdir(self.lists_dir)
                      if self._has_config(name))


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
        self._check()
        return sorted(os.listdir(self.lists_dir))


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
