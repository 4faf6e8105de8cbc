"""The pure checks of one request, in order: request, token, binding, replay, policy."""
