"""The public listener's side: connections, body decoding, bot scores, client limits, handlers."""
