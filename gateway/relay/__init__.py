"""The relay: lease → gates (pacer, …) → send through the Calltouch client → settle each job."""
