"""Pure decisions about traffic: routing tables for nginx, discovery views for haproxy, availability
from access logs, ejection of failing backends, and the gateway's recorded plans."""
