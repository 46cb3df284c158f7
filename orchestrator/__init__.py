"""Everything that touches Ray lives here; modules import Ray lazily so the CLI stays fast.

Importing this package sets Ray's environment (loopback only, no usage stats) before any of its
modules can import Ray: Ray reads these variables when it is imported.
"""

from orchestrator.cluster import set_ray_env

set_ray_env()
