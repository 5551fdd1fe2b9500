"""arq job functions, thin: load, call the service layer, let `service.queue` decide retries."""
