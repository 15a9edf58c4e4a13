"""The control plane's side of the policy snapshot: building it from rows, announcing changes."""
