"""Pure decisions about Puppet: the class catalog read from manifests, class associations, and the
ENC's answer for a host."""
