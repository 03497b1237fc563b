"""The Mailman 3 plug-in: keeps Sendmail's maps current as lists come and go.

In mailman.cfg::

    [mta]
    incoming: mm_handler.mailman3_mta.Sendmail
    configuration: /etc/mm-handler.cfg

Mailman calls ``create(mlist)`` after it creates a list, ``delete(mlist)``
after it removes one, and ``regenerate(directory)`` on ``mailman aliases``
and every ``mailman start``.  Each call rewrites the maps of ``mm-handler
maps`` (virtusertable, mailertable, virtuser-domains, and their .db files
when ``[maps] run_makemap = yes``) from Mailman's own list and domain
managers, atomically and under the maps lock, the way Mailman's Postfix
module keeps Postfix's maps current.  An error is raised to Mailman (a
failed ``mailman create`` is rolled back), and logged to mailman.error.

``configuration`` names mm-handler's configuration file; when it is not an
absolute path (Mailman's default names the Postfix one), $MM_HANDLER_CONFIG
or /etc/mm-handler.cfg is read.  The plug-in runs as Mailman's user: that
user must be able to write ``[maps] output_dir`` (and run makemap).

Mailman is imported here only: the mailer itself never needs it.
"""

import logging

from mailman.config import config
from mailman.interfaces.domain import IDomainManager
from mailman.interfaces.listmanager import IListManager
from mailman.interfaces.mta import IMailTransportAgentLifecycle
from zope.component import getUtility
from zope.interface import implementer

from . import config as mm_config
from . import maps

log = logging.getLogger("mailman.error")


def configuration_path():
    """mm-handler's configuration file, as named in [mta] configuration."""
    named = getattr(config.mta, "configuration", "") or ""
    if named.startswith("/"):
        return named
    return mm_config.config_path(None)


def mailman_lists(extra=None):
    """[(list name, mail host)] of every list Mailman knows (plus `extra`)."""
    lists = list(getUtility(IListManager).name_components)
    if extra is not None:
        lists.append((extra.list_name, extra.mail_host))
    return lists


def mailman_domains():
    return [domain.mail_host for domain in getUtility(IDomainManager)]


@implementer(IMailTransportAgentLifecycle)
class Sendmail:
    """`[mta] incoming` plug-in: rewrite mm-handler's Sendmail maps."""

    def __init__(self):
        path = configuration_path()
        try:
            self.settings = mm_config.load(path)
        except mm_config.ConfigError as exc:
            log.error("mm-handler plug-in: %s", exc)
            raise

    def create(self, mlist):
        """See `IMailTransportAgentLifecycle`: the new list is included."""
        self._write(extra=mlist)

    def delete(self, mlist):
        """See `IMailTransportAgentLifecycle`: the list is gone already."""
        self._write(without=(mlist.list_name, mlist.mail_host))

    def regenerate(self, directory=None):
        """See `IMailTransportAgentLifecycle`; `directory` overrides
        [maps] output_dir (``mailman aliases --directory DIR``)."""
        self._write(output_dir=directory)

    def _write(self, extra=None, without=None, output_dir=None):
        lists = mailman_lists(extra)
        if without is not None:
            lists = [item for item in lists if tuple(item) != without]
        try:
            report = maps.write_maps(self.settings, lists, output_dir,
                                     default_domains=mailman_domains())
        except maps.MapsError as exc:
            log.error("mm-handler plug-in: %s", exc)
            raise RuntimeError("mm-handler maps: %s" % exc) from None
        for address in report.tables.skipped:
            log.error("mm-handler plug-in: list %s is in none of the [maps] "
                      "domains: its mail is not routed by the maps", address)
        logging.getLogger("mailman.config").info("mm-handler plug-in: %s", report)
        return report
