"""Built-in domains. Importing this package registers them with the DomainRegistry;
a domain elsewhere is named as ``module:attribute`` in ``DOCKET_DOMAIN``."""

from app.domains.inventory import inventory
from app.registry import registry

registry.register(inventory)
