"""Platform adapters: real webhook formats mapped to our order model, so a shop on those
platforms plugs in without code. Each adapter verifies its platform's signature of the raw
body before reading it, maps prices (decimal strings of major units) to minor units by the
currency's exponent, creates a buyer unknown to Tuike from the webhook's customer (keyed by
platform and customer id), then calls the same use cases as the REST API."""
