PUSHDIVERT(-1)
dnl #
dnl #  mailman.m4 -- the Sendmail mailer definition for mm-handler, which hands
dnl #  list mail to GNU Mailman 2 (its mail wrapper) or Mailman 3 (LMTP).
dnl #
dnl #  Use it in either of two ways, after MAILER(`local') and MAILER(`smtp'):
dnl #
dnl #    MAILER(`mailman')
dnl #        with this file copied to the cf/mailer/ directory of the Sendmail
dnl #        configuration kit (Debian: /usr/share/sendmail/cf/mailer/);
dnl #
dnl #    include(`/path/to/mailman.m4')
dnl #        straight from the kit, without copying anything.
dnl #
dnl #  Every part can be overridden with a define() placed BEFORE either line:
dnl #
dnl #    MAILMAN_MAILER_PATH   the mm-handler program (P=); an absolute path the
dnl #                          mailer user can reach
dnl #                          default: /opt/mm-handler/bin/mm-handler
dnl #    MAILMAN_MAILER_ARGS   its argument vector (A=)
dnl #                          default: `mm-handler $h $u'
dnl #                          e.g. `mm-handler -C /etc/mm-handler.cfg $h $u'
dnl #    MAILMAN_MAILER_USER   the user:group it runs as (U=); it must be able to
dnl #                          run the program and its Python, and read the
dnl #                          configuration file; for Mailman 2 the group must be
dnl #                          the one the wrapper was compiled for.  A user of
dnl #                          its own that owns nothing: no file Sendmail reads
dnl #                          (the maps belong to Mailman's user) may be
dnl #                          writable by it
dnl #                          default: `mm-handler:list' (adduser --system
dnl #                          --ingroup list mm-handler; list is the mail group
dnl #                          of Debian's Mailman 2)
dnl #    MAILMAN_MAILER_FLAGS  the flags (F=)
dnl #                          default: `rDFMhlqSu'
dnl #                          r  pass the envelope sender as -r SENDER
dnl #                          D, F, M  add Date:, From:, Message-Id: if missing
dnl #                          h, u  keep the case of host and user
dnl #                          l  a local mailer (final delivery)
dnl #                          q  250 rather than 252 for SMTP VRFY
dnl #                          S  run as the U= user (do not reset to DefaultUser)
dnl #                          or change them one by one with
dnl #                          MODIFY_MAILER_FLAGS(`MAILMAN', `+m') (one run for
dnl #                          all recipients of a list domain; one exit status
dnl #                          then applies to all of them)
dnl #    MAILMAN_MAILER_MAX    the largest message accepted (M=, bytes), if set
dnl #    MAILMAN_MAILER_QGRP   a queue group for this mailer (Q=), if set
dnl #    MAILMAN_SOCKETMAP     the live list lookup instead of the generated
dnl #                          virtusertable (README.sendmail, section 11): where
dnl #                          `mm-handler socketmap' listens, in Sendmail's own
dnl #                          syntax, e.g. `unix:/run/mm-handler/socketmap' or
dnl #                          `inet:8025@127.0.0.1'.  Every address in the
dnl #                          virtuser domains (VIRTUSER_DOMAIN[_FILE]) and in
dnl #                          class w is then looked up there, key by key as
dnl #                          FEATURE(`virtusertable') looks it up, and that
dnl #                          feature's own table is no longer read.  A lookup
dnl #                          that fails (server down, restarting, slow) is a
dnl #                          451 4.3.0 at RCPT: never a 5xx, never a bounce later
dnl #    MAILMAN_SOCKETMAP_TIMEOUT  seconds to wait for an answer (the map's -d)
dnl #                          default: 5
dnl #
dnl #  Route the list domain to it in the mailertable:
dnl #
dnl #    lists.example.org     mailman:lists.example.org
dnl #
dnl #  mm-handler's exit status tells Sendmail what to do: 0 delivered,
dnl #  75 keep the message queued and retry, 67 "User unknown" (a DSN to the
dnl #  sender).  What mm-handler prints appears in that DSN.
dnl #
ifdef(`MAILMAN_MAILER_PATH',,
	`define(`MAILMAN_MAILER_PATH', `/opt/mm-handler/bin/mm-handler')')
ifdef(`MAILMAN_MAILER_ARGS',,
	`define(`MAILMAN_MAILER_ARGS', `mm-handler $h $u')')
ifdef(`MAILMAN_MAILER_USER',,
	`define(`MAILMAN_MAILER_USER', `mm-handler:list')')
_DEFIFNOT(`MAILMAN_MAILER_FLAGS', `rDFMhlqSu')
define(`_MAILMAN_QGRP', `ifelse(defn(`MAILMAN_MAILER_QGRP'),`',`', ` Q=MAILMAN_MAILER_QGRP,')')
ifdef(`_MAILER_mailman_',,
	`define(`_MAILER_mailman_', `')define(`_MAILER_DEFINED_', `1')')
ifdef(`MAILMAN_SOCKETMAP', `_DEFIFNOT(`MAILMAN_SOCKETMAP_TIMEOUT', `5')dnl
undefine(`_VIRTUSER_TABLE_')dnl
PUSHDIVERT(6)
# mm-handler socketmap: the live list lookup.  No -o: a server that cannot
# be reached makes every lookup fail, and -T makes a failed one KEY<TMPF>.
Kmm_handler socket -T<TMPF> -d`'MAILMAN_SOCKETMAP_TIMEOUT MAILMAN_SOCKETMAP
POPDIVERT
PUSHDIVERT(3)
# mm-handler socketmap: the virtuser domains (and class w) are looked up
# live, key by key as the virtusertable feature looks them up; a failed
# lookup answers 451 at RCPT
R$+ < @ $={VirtHost} >	$: $1 < @ $2 . >
R$+	$: <!> $1
R<!> $+ < @ $={VirtHost} . >	$: < $(mm_handler $1 @ $2 $@ $1 $: @ $) > $1 < @ $2 . >
R<!> $+ < @ $=w . >	$: < $(mm_handler $1 @ $2 $@ $1 $: @ $) > $1 < @ $2 . >
R<@> $+ + $+ < @ $* . >	$: < $(mm_handler $1 + + @ $3 $@ $1 $@ $2 $@ +$2 $: @ $) > $1 + $2 < @ $3 . >
R<@> $+ + $* < @ $* . >	$: < $(mm_handler $1 + * @ $3 $@ $1 $@ $2 $@ +$2 $: @ $) > $1 + $2 < @ $3 . >
R<@> $+ + $* < @ $* . >	$: < $(mm_handler $1 @ $3 $@ $1 $@ $2 $@ +$2 $: @ $) > $1 + $2 < @ $3 . >
R<@> $+ + $+ < @ $+ . >	$: < $(mm_handler + + @ $3 $@ $1 $@ $2 $@ +$2 $: @ $) > $1 + $2 < @ $3 . >
R<@> $+ + $* < @ $+ . >	$: < $(mm_handler + * @ $3 $@ $1 $@ $2 $@ +$2 $: @ $) > $1 + $2 < @ $3 . >
R<@> $+ + $* < @ $+ . >	$: < $(mm_handler @ $3 $@ $1 $@ $2 $@ +$2 $: ! $) > $1 + $2 < @ $3 . >
R<@> $+ < @ $+ . >	$: < $(mm_handler @ $2 $@ $1 $: @ $) > $1 < @ $2 . >
R< $* <TMPF> > $*	$#error $@ 4.3.0 $: "451 Temporary failure of the list lookup. Please try again later."
R<@> $+	$: $1
R<!> $+	$: $1
R< error : $-.$-.$- : $+ > $*	$#error $@ $1.$2.$3 $: $4
R< error : $- $+ > $*	$#error $@ $(dequote $1 $) $: $2
R< $+ > $+ < @ $+ >	$@ $>Recurse $1
POPDIVERT')
POPDIVERT
PUSHDIVERT(7)
dnl ###########################################
dnl ###   mm-handler: GNU Mailman mailer    ###
dnl ###########################################

Mmailman,	P=MAILMAN_MAILER_PATH, F=_MODMF_(MAILMAN_MAILER_FLAGS, `MAILMAN'), S=EnvFromL, R=EnvToL/HdrToL,
		_OPTINS(`MAILMAN_MAILER_MAX', `M=', `, ')U=MAILMAN_MAILER_USER, T=DNS/RFC822/X-Unix,_MAILMAN_QGRP
		A=MAILMAN_MAILER_ARGS

POPDIVERT
