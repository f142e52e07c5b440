"""Pure decisions about the service tree and the inventory: paths, inheritance, machines, bindings,
provisioning records, validation and the invariants the store checks."""
