"""Status codes of ETSI GS QKD 004 V2.1.1 (handbook STANDARDS.md).

One home for both sides of the 004 interface: the gateway's client (``client004``) and the twin's KME
(``twin/etsi004``). Plain constants, no Django, so the standalone twin can import it too.
"""

SUCCESSFUL = 0
PEER_NOT_CONNECTED = 1
INSUFFICIENT_KEY = 2
PEER_NOT_YET_CONNECTED = 3
NO_QKD_CONNECTION = 4
KSID_IN_USE = 5
TIMEOUT = 6
QOS_NOT_MET = 7
METADATA_TOO_SMALL = 8
