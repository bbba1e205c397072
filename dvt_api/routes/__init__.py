"""One router module per resource; dvt_api.app includes them all."""
