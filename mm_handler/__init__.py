"""mm-handler: a Sendmail mailer that hands list mail to GNU Mailman."""

__version__ = "0.1.0"
