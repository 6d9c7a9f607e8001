"""anpx_host: the process concerns both drivers share, written once.

Configuration (:mod:`.config`), the command line (:mod:`.cli`), the launch plan
(:mod:`.launch`), app loading (:mod:`.apploader`), logging setup (:mod:`.logsetup`), TLS
contexts (:mod:`.tls`), the ASGI app-call coroutines (:mod:`.appcalls`), the WSGI bridge
(:mod:`.wsgi`), the built-in demo app (:mod:`.demo`), the conformance adapter's I/O
(:mod:`.adapter`) and the one :class:`~.errors.StartupError`.

The pure protocol core, :mod:`anpx_core`, never imports this package; the drivers
(``anpx_trio``, ``anpx_asyncio``) import both. Importing this package itself loads nothing.
"""
