"""Adding the certbound sidecar to pods people already run: `kube-inject` and the webhook.

spec.py is the sidecar's one definition; manifests.py the pure manifest transformation;
patch.py JSONPatch from a before/after pair; webhook.py the admission server (I/O)."""
