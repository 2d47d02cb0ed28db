"""The runtime contract: what the operator renders into pods and the code inside them reads back
(docs/runtime-contract.md). It imports only the API models, never the operator or the runtime, so both
sides depend on it and not on each other.

- environment: the ``KUBEMAAS_*`` and rendezvous variables (re-exported here: ``contract.Settings``);
- termination: the one-line JSON termination message and the exit codes;
- keys: the files of a mounted key Secret;
- store: artifact-store URIs (``pvc://``, ``file://``) and model and version names;
- serving: the Triton settings the operator passes the model loader as flags.
"""

from kubemaas.contract.environment import *  # noqa: F403
