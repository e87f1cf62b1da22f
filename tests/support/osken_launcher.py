"""Starts os-ken's manager (os-ken 1.4.1, the last release that ships ofctl_rest).

eventlet 0.33.3 lacks ``eventlet.wsgi.ALREADY_HANDLED``, which os-ken's WSGI glue reads;
it is set here before the manager is imported. Arguments are passed through unchanged, e.g.
``--ofp-listen-host 127.0.0.1 --ofp-tcp-listen-port P --wsapi-host 127.0.0.1 --wsapi-port Q
os_ken.app.ofctl_rest os_ken.app.simple_switch_13``.
"""

import sys

import eventlet.wsgi

if not hasattr(eventlet.wsgi, "ALREADY_HANDLED"):
    eventlet.wsgi.ALREADY_HANDLED = object()

from os_ken.cmd import manager  # noqa: E402  (must follow the patch above)

if __name__ == "__main__":
    sys.argv[0] = "osken-manager"
    sys.exit(manager.main())
