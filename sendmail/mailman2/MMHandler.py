# -*- coding: utf-8 -*-
"""Mailman 2 MTA module: keep mm-handler's Sendmail maps current.

Mailman 2 calls the module named by mm_cfg.MTA (Mailman.MTA.<MTA>) when a
list is created or removed: bin/newlist and the web UI's create call
create(mlist[, cgi=1]), bin/rmlist and the web UI's rmlist call
remove(mlist[, cgi=1]), bin/genaliases calls makelock(), clear() and
create(..., nolock=True) for every list, then create(None, quiet=True).
This module answers each of them by running, without a shell,

    MM_HANDLER maps -C MM_HANDLER_CONFIG --makemap

which rewrites the virtusertable (and the other map sources) from the lists
directory and rebuilds the .db files (README.sendmail, sections 7 and 10).

The maps are written from the lists on the disk, so the run must come
when the disk agrees:

- newlist and the web UI call create() after mlist.Save(): config.pck is
  there and the run happens at once.  Should a caller ever call create()
  before the list is saved, the run is put off until the process exits.
- rmlist and the web UI call remove() BEFORE they delete lists/NAME: a run
  at that moment would keep the list in the maps.  So remove() runs
  nothing; the run happens when the process exits (atexit), after the
  directory is gone.  If it could not be removed, the list is still a list
  and stays in the maps.
- genaliases: the per-list calls (nolock=True) only ask for a run; its last
  call, create(None), makes it (once).  A run still asked for when the
  process exits is made then.

A failed run never breaks newlist or rmlist (the list is already made, or
being removed): one line says what failed on stderr and in Mailman's error
log, and one more says what to run by hand.

Settings (mm_cfg.py), with their defaults:

    MM_HANDLER = '/opt/mm-handler/bin/mm-handler'
    MM_HANDLER_CONFIG = '/etc/mm-handler.cfg'   # '' or None: no -C
    MM_HANDLER_TIMEOUT = 120                    # seconds, then killed
    MM_HANDLER_COMMAND_PREFIX = []              # e.g. ['/usr/bin/sudo',
                                                # '-n', '-u', 'list', '--']

Runs on Python 2.7 (classic Mailman 2.1) and Python 3 (mailman2-python3).
"""

from __future__ import print_function

import atexit
import os
import subprocess
import sys
import threading

from Mailman import mm_cfg

DEFAULT_PROGRAM = '/opt/mm-handler/bin/mm-handler'
DEFAULT_CONFIG = '/etc/mm-handler.cfg'
DEFAULT_TIMEOUT = 120
# the one environment mm-handler gets (it needs no more: -C names its file)
ENVIRONMENT = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}
# what makes a list directory a list, for Mailman 2 and mm-handler alike
LIST_CONFIGS = ('config.pck', 'config.pck.last', 'config.db', 'config.db.last')
TAG = 'MMHandler'
try:
    STRINGS = (basestring,)         # noqa: F821 - Python 2
except NameError:
    STRINGS = (str,)

_pending = []           # why a run was put off until the process exits
_registered = []


# -- Mailman 2's MTA interface ------------------------------------------------

def makelock():
    """genaliases locks around its calls; mm-handler maps locks by itself."""
    class Dummy:
        def lock(self):
            pass

        def unlock(self, unconditionally=False):
            pass
    return Dummy()


def clear():
    """genaliases: nothing to clear, every run writes the maps afresh."""


def create(mlist, cgi=False, nolock=False, quiet=False):
    """A list was created (or genaliases runs).  True when the maps were
    written now, False when the run failed, None when it was put off."""
    if mlist is None:
        return _regenerate('genaliases', cgi, quiet)
    name = mlist.internal_name()
    if nolock:
        # genaliases, once per list: its create(None) at the end runs it
        return _put_off('genaliases', cgi)
    if _list_exists(name):
        return _regenerate('creating list %s' % name, cgi, quiet)
    # not saved yet: the maps must not be written without it
    return _put_off('creating list %s' % name, cgi)


def remove(mlist, cgi=False):
    """A list is about to be removed: its directory is deleted after this
    returns, so the maps are written when the process exits."""
    name = mlist.internal_name()
    if not _list_exists(name):
        return _regenerate('removing list %s' % name, cgi, False)
    return _put_off('removing list %s' % name, cgi)


# -- running mm-handler ---------------------------------------------------------

def _setting(name, default):
    return getattr(mm_cfg, name, default)


def command():
    """The fixed argv: [prefix...] PROGRAM maps [-C CONFIG] --makemap."""
    prefix = _setting('MM_HANDLER_COMMAND_PREFIX', None) or []
    program = _setting('MM_HANDLER', DEFAULT_PROGRAM)
    config = _setting('MM_HANDLER_CONFIG', DEFAULT_CONFIG)
    if (isinstance(prefix, STRINGS)
            or not all(isinstance(a, STRINGS) for a in prefix)):
        raise ValueError('MM_HANDLER_COMMAND_PREFIX must be a list of strings, '
                         'not %r' % (prefix,))
    if not isinstance(program, STRINGS) or not program.startswith('/'):
        raise ValueError('MM_HANDLER must be an absolute path, not %r'
                         % (program,))
    if config and (not isinstance(config, STRINGS) or not config.startswith('/')):
        raise ValueError('MM_HANDLER_CONFIG must be an absolute path, not %r'
                         % (config,))
    argv = list(prefix) + [program, 'maps']
    if config:
        argv += ['-C', config]
    return argv + ['--makemap']


def _lists_dir():
    return _setting('LIST_DATA_DIR', None) or os.path.join(
        _setting('VAR_PREFIX', '/var/lib/mailman'), 'lists')


def _list_exists(name):
    base = os.path.join(_lists_dir(), name)
    return any(os.path.exists(os.path.join(base, c)) for c in LIST_CONFIGS)


def _put_off(why, cgi):
    _pending.append((why, cgi))
    if not _registered:
        _registered.append(True)
        atexit.register(_at_exit)
    return None


def _at_exit():
    if _pending:
        why, cgi = _pending[-1]
        _regenerate(why, cgi, False)


def _regenerate(why, cgi=False, quiet=False):
    """Run mm-handler maps now; True if it wrote the maps."""
    del _pending[:]                 # this run serves every earlier request
    try:
        argv = command()
    except ValueError as exc:
        _failed(why, str(exc), None, cgi)
        return False
    try:
        timeout = float(_setting('MM_HANDLER_TIMEOUT', DEFAULT_TIMEOUT))
    except (TypeError, ValueError):
        timeout = DEFAULT_TIMEOUT
    devnull = open(os.devnull, 'rb')
    try:
        try:
            proc = subprocess.Popen(argv, stdin=devnull, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, close_fds=True,
                                    cwd='/', env=dict(ENVIRONMENT))
        except OSError as exc:
            _failed(why, 'cannot run %s: %s' % (argv[0], exc.strerror), argv, cgi)
            return False
    finally:
        devnull.close()
    expired = []
    if sys.version_info >= (3, 3):
        # no thread: at exit, Python 3.12+ refuses to start one
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            expired.append(True)
            proc.kill()
            out, err = proc.communicate()
    else:
        def kill():
            expired.append(True)
            try:
                proc.kill()
            except OSError:
                pass
        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            out, err = proc.communicate()
        finally:
            timer.cancel()
            timer.join()    # never left waiting at interpreter shutdown
    out, err = _text(out).strip(), _text(err).strip()
    if expired:
        _failed(why, '%s took more than %g s and was killed'
                % (' '.join(argv[:2]), timeout), argv, cgi)
        return False
    if proc.returncode != 0:
        reason = err.splitlines()[-1] if err else 'no message'
        what = ('exit %d' % proc.returncode if proc.returncode > 0
                else 'killed by signal %d' % -proc.returncode)
        _failed(why, 'mm-handler maps failed (%s): %s' % (what, reason),
                argv, cgi)
        return False
    # success: mm-handler's own line on the terminal (never in a web page),
    # and its warnings, if any, where errors go
    if err:
        _say_error(err, cgi)
    if out and not cgi and not quiet:
        sys.stdout.write('%s: %s\n' % (TAG, out))
        sys.stdout.flush()
    return True


def _text(data):
    """Subprocess bytes -> the native str of this Python."""
    if isinstance(data, str):
        return data                 # Python 2: bytes are str
    return data.decode('utf-8', 'replace')


def _quote(arg):
    try:
        from shlex import quote
    except ImportError:             # Python 2
        from pipes import quote
    return quote(arg)


def _failed(why, reason, argv, cgi):
    lines = ['%s: the Sendmail maps were NOT updated after %s: %s'
             % (TAG, why, reason)]
    if why.startswith('creating'):
        lines.append('%s: until they are, Sendmail refuses mail to the new '
                     'list at RCPT time (550 5.1.1)' % TAG)
    elif why.startswith('removing'):
        lines.append('%s: until they are, Sendmail still accepts mail to the '
                     'removed list (mm-handler then refuses it)' % TAG)
    if argv is None:
        lines.append('%s: fix mm_cfg.py, then run %s maps --makemap by hand'
                     % (TAG, DEFAULT_PROGRAM))
    else:
        lines.append('%s: fix the cause, then run by hand, as the owner of '
                     'the maps directory or root: %s'
                     % (TAG, ' '.join(_quote(a) for a in argv)))
    _say_error('\n'.join(lines), cgi)


def _say_error(text, cgi):
    # Under the web UI, stderr is Mailman's error log already (or the web
    # server's, once the page is out): the log line is enough there.
    if not cgi:
        try:
            sys.stderr.write(text + '\n')
            sys.stderr.flush()
        except Exception:           # noqa: BLE001 - never break newlist
            pass
    try:
        from Mailman.Logging.Syslog import syslog
        for line in text.splitlines():
            syslog('error', '%s', line)
    except Exception:               # noqa: BLE001 - never break newlist
        if cgi:
            try:
                sys.stderr.write(text + '\n')
            except Exception:       # noqa: BLE001
                pass
