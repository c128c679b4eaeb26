"""An SMTP server on loopback for workers/tests/email.rs, written against aiosmtpd (the
asyncio SMTP server from the Python project) rather than the workers' code. It prints
`{"port": N}` once listening, then one JSON line per message it accepts: the envelope,
the headers a reader sees, and each part of the body, decoded by Python's email
package. Recipients whose local part is `refused` get a permanent 550; `busy` a
transient 451 (the delivery is to be retried); the refusals are printed too. Each
message says whether it came over TLS.

Usage: smtp_server.py [smtps|starttls CERT_PEM KEY_PEM]
  smtps: TLS from the first byte; starttls: plain until STARTTLS, which is required
  before anything is accepted.
"""

import asyncio
import email
import email.policy
import json
import ssl
import sys

from aiosmtpd.smtp import SMTP


def say(record):
    print(json.dumps(record), flush=True)


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local == "refused":
            say({"refused": address, "code": 550})
            return "550 5.1.1 No such user here"
        if local == "busy":
            say({"refused": address, "code": 451})
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = []
        for part in message.walk():
            if part.is_multipart():
                continue
            parts.append({"type": part.get_content_type(), "body": part.get_content()})
        say(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "from": str(message["From"]),
                "to": str(message["To"]),
                "subject": str(message["Subject"]),
                "message_id": str(message["Message-ID"]),
                "content_type": message.get_content_type(),
                "tls": server.transport.get_extra_info("ssl_object") is not None,
                "parts": parts,
            }
        )
        return "250 Message accepted for delivery"


def tls_context(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def main():
    loop = asyncio.get_running_loop()
    handler = Handler()
    mode = sys.argv[1] if len(sys.argv) > 1 else "plain"
    if mode == "smtps":
        context = tls_context(sys.argv[2], sys.argv[3])
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="smtp.test"), "127.0.0.1", 0, ssl=context
        )
    elif mode == "starttls":
        context = tls_context(sys.argv[2], sys.argv[3])
        server = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="smtp.test",
                tls_context=context,
                require_starttls=True,
            ),
            "127.0.0.1",
            0,
        )
    else:
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="smtp.test"), "127.0.0.1", 0
        )
    say({"port": server.sockets[0].getsockname()[1]})
    await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
