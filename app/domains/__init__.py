"""Built-in domains. Importing this package registers them with the DomainRegistry,
each with its kit (app/domains/kit.py); a domain elsewhere is named as
``module:attribute`` in ``DOCKET_DOMAIN``."""

from app.domains import accounts_kit, inventory_kit
from app.domains.accounts import accounts
from app.domains.inventory import inventory
from app.domains.inventory_v2 import inventory_v2
from app.registry import registry

registry.register(inventory, inventory_kit.kit)
registry.register(inventory_v2)
registry.register(accounts, accounts_kit.kit)
