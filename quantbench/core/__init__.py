"""The ground floor: errors, the cache, the record schema, the format registry, suites and backend
environments. Imports nothing else of quantbench."""
