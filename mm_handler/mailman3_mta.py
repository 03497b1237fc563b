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

The lists are read under the maps lock.  create() and delete() run inside
Mailman's transaction, before it commits: they add (remove) their list on
top of what they read, and once the transaction has ended, committed or
rolled back, they write the maps once more from the committed lists.  So
an overlapping ``mailman aliases`` cannot drop a new list or keep a removed
one, and a list whose creation was rolled back is not left in the maps.
Orphan ``var/lists/<id>`` directories (a failed ``mailman create``) are
never read: Mailman's list manager is the only source.

A domain with an ``alias_domain`` (Mailman's IDomain; Postorius and the
REST API set it, or ``mailman shell -r mm_handler.mailman3_mta.alias_domain
DOMAIN ALIAS``) has every list address in the maps at the alias too,
rewritten to the list's own domain: the mailer gets the real domain as $h
and gives it to Mailman's LMTP server.

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


def mailman_lists():
    """[(list name, mail host)] of every list Mailman knows, in this
    transaction (a list created or removed in it, not yet committed, too)."""
    return list(getUtility(IListManager).name_components)


def mailman_domains():
    return [domain.mail_host for domain in getUtility(IDomainManager)]


def mailman_alias_domains():
    """{mail host: alias domain} of every domain that has one."""
    return {domain.mail_host: domain.alias_domain
            for domain in getUtility(IDomainManager)
            if getattr(domain, "alias_domain", None)}


def committed_lists_and_domains():
    """The lists, domains and alias domains as committed, read in a session
    of our own (the caller's transaction has just ended)."""
    from mailman.model.domain import Domain
    from mailman.model.mailinglist import MailingList
    from sqlalchemy import select
    from sqlalchemy.orm import Session
    alias = getattr(Domain, "alias_domain", None)     # Mailman 3.3.3 and later
    with Session(config.db.engine) as session:
        lists = session.execute(select(MailingList.list_name,
                                       MailingList.mail_host)).all()
        if alias is None:
            rows = [(host, None) for host in session.execute(
                select(Domain.mail_host)).scalars().all()]
        else:
            rows = session.execute(select(Domain.mail_host, alias)).all()
    return ([tuple(row) for row in lists], [host for host, _ in rows],
            {host: other for host, other in rows if other})


@implementer(IMailTransportAgentLifecycle)
class Sendmail:
    """`[mta] incoming` plug-in: rewrite mm-handler's Sendmail maps."""

    def __init__(self):
        path = configuration_path()
        try:
            self.settings = mm_config.load(path).check_all()
        except mm_config.ConfigError as exc:
            log.error("mm-handler plug-in: %s", exc)
            raise

    def create(self, mlist):
        """See `IMailTransportAgentLifecycle`: the new list is included."""
        self._write(change=(mlist.list_name, mlist.mail_host, True))
        _when_transaction_ends(self)

    def delete(self, mlist):
        """See `IMailTransportAgentLifecycle`: the list is left out."""
        self._write(change=(mlist.list_name, mlist.mail_host, False))
        _when_transaction_ends(self)

    def regenerate(self, directory=None):
        """See `IMailTransportAgentLifecycle`; `directory` overrides
        [maps] output_dir (``mailman aliases --directory DIR``)."""
        self._write(output_dir=directory)

    def _write(self, change=None, output_dir=None, committed=False):
        """Write the maps; the lists are read under the maps lock.

        `change` (name, host, present) is applied on top of what is read:
        Mailman calls create() and delete() before its transaction commits,
        and the list set read here may not show the change yet.
        """
        read = {}

        def lists():                # called under the maps lock
            if committed:
                found, read["domains"], read["aliases"] = \
                    committed_lists_and_domains()
            else:
                found = mailman_lists()
            found = {(name.lower(), host.lower()) for name, host in found}
            if change is not None:
                item = (change[0].lower(), change[1].lower())
                if change[2]:
                    found.add(item)
                else:
                    found.discard(item)
            return sorted(found)

        def domains():              # called under the lock, after lists()
            return read["domains"] if committed else mailman_domains()

        def aliases():              # called under the lock, after domains()
            return read["aliases"] if committed else mailman_alias_domains()

        try:
            report = maps.write_maps(self.settings, lists, output_dir,
                                     default_domains=domains,
                                     alias_domains=aliases)
        except maps.MapsError as exc:
            log.error("mm-handler plug-in: %s", exc)
            raise RuntimeError("mm-handler maps: %s" % exc) from None
        for address in report.tables.skipped:
            log.error("mm-handler plug-in: list %s is in none of the [maps] "
                      "domains: its mail is not routed by the maps", address)
        for domain, alias, why in report.tables.ignored_aliases:
            log.error("mm-handler plug-in: alias domain %r of %s is left out of "
                      "the maps: %s", alias, domain, why)
        logging.getLogger("mailman.config").info("mm-handler plug-in: %s", report)
        return report

    def after_transaction(self):
        """The transaction of a create() or delete() has ended: committed
        or rolled back, write the maps again from what is committed."""
        try:
            self._write(committed=True)
        except Exception as exc:    # noqa: BLE001 - the transaction is over
            log.error("mm-handler plug-in: after the transaction: %s", exc)


# -- alias domains from the command line --------------------------------------------

def alias_domain(mail_host, alias=""):
    """Give Mailman's domain MAIL_HOST the alias domain ALIAS (none when
    ALIAS is empty or "-"), registering MAIL_HOST if Mailman does not know
    it yet; then rewrite the MTA's maps.  Mailman's own CLI cannot set an
    alias domain (Postorius and the REST API can)::

        mailman shell -r mm_handler.mailman3_mta.alias_domain \\
            lists.example.org lists.example.net

    Mailman commits when the command ends; the maps are written before
    that (this transaction sees the change) and, with this plug-in, once
    more after the commit.
    """
    from mailman.utilities.modules import call_name
    from .address import is_domain
    mail_host = mail_host.strip().lower()
    alias = "" if alias.strip() == "-" else alias.strip().lower()
    for name in (mail_host, alias):
        if name and not is_domain(name):
            raise SystemExit("alias_domain: %r is no domain name" % name)
    if alias == mail_host:
        raise SystemExit("alias_domain: a domain cannot be its own alias")
    manager = getUtility(IDomainManager)
    domain = manager.get(mail_host)
    if domain is None:
        domain = manager.add(mail_host)
    for other in manager:
        if alias and other.mail_host == alias:
            raise SystemExit("alias_domain: %s is a Mailman domain itself"
                             % alias)
    domain.alias_domain = alias or None
    print("%s: alias domain %s" % (mail_host, alias or "(none)"))
    plugin = call_name(config.mta.incoming)
    plugin.regenerate()
    if isinstance(plugin, Sendmail):
        _when_transaction_ends(plugin)


# -- after the transaction ---------------------------------------------------------
#
# create() and delete() write maps that include (leave out) their list
# before Mailman commits.  A regeneration that takes the maps lock between
# that write and the commit reads the old list set and would drop the new
# list (keep the removed one); a transaction rolled back after create()
# would leave a list in the maps that Mailman does not have.  So, once the
# transaction ends either way, the maps are written once more from the
# committed lists.  One listener per database session, registered once,
# runs whatever plug-in asked for it in that transaction.

PENDING = "mm_handler_after_transaction"


def _when_transaction_ends(plugin):
    try:
        from sqlalchemy import event
        session = config.db.store
        info = session.info
    except Exception as exc:    # noqa: BLE001 - not SQLAlchemy: nothing to hook
        log.error("mm-handler plug-in: cannot follow the transaction: %s", exc)
        return
    if not info.get(PENDING + "_listening"):
        event.listen(session, "after_transaction_end", _transaction_ended)
        info[PENDING + "_listening"] = True
    info[PENDING] = plugin


def _transaction_ended(session, transaction):
    if transaction.parent is not None or transaction.nested:
        return                      # a savepoint or a subtransaction
    plugin = session.info.pop(PENDING, None)
    if plugin is not None:
        plugin.after_transaction()
