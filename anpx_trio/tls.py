"""ssl.SSLContext from a core TlsPolicy (TLS 1.2 minimum).

The other driver has the same function: the core may not import ssl, and neither
driver may depend on the other, so these few lines of stdlib glue stand twice.
"""

from __future__ import annotations

import ssl

from anpx_core.launch import StartupFailure, TlsPolicy

_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def make_context(policy: TlsPolicy | None) -> ssl.SSLContext | None:
    if policy is None:
        return None
    purpose = ssl.Purpose.CLIENT_AUTH if policy.server_side else ssl.Purpose.SERVER_AUTH
    try:
        context = ssl.create_default_context(purpose, cafile=policy.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if policy.cert_file:
            context.load_cert_chain(policy.cert_file, policy.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise StartupFailure(
            f"cannot load TLS files ({policy.cert_file or policy.ca_file}): {exc}"
        ) from exc
    if policy.server_side:
        context.verify_mode = _VERIFY[policy.verify]
    else:
        context.check_hostname = policy.check_hostname
        context.verify_mode = _VERIFY[policy.verify]
    return context
