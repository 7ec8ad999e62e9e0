#!/usr/bin/env bash
# Minimal PKI for the single-node cluster: one CA, serving certs for the API server and kubelet,
# client certs per component, the service-account signing key pair, and the broker's TLS
# listener's cert (with a client cert for mutual TLS). Idempotent: an existing CA is kept, and
# only what is missing is made. usage: mkpki.sh DIR NODE_NAME EXTRA_APISERVER_IP
set -euo pipefail
dir=$1 node=$2 extra_ip=$3
mkdir -p "$dir"; cd "$dir"
umask 077
sign() {  # sign NAME SUBJECT EXTENSIONS
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

broker_certs() {  # AMQP over TLS (RabbitMQ's listener on 5671)
  [ -f amqp-server.crt ] || sign amqp-server "/CN=dispatcher-stack-rabbitmq" "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:$extra_ip"
  [ -f amqp-client.crt ] || sign amqp-client "/CN=dispatcher" "extendedKeyUsage=clientAuth"
  chmod 600 ./*.key; chmod 644 ./*.crt
}
if [ -f ca.crt ] && [ -f sa.pub ]; then broker_certs; exit 0; fi
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=dispatcher-stack-ca" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1,IP:$extra_ip"
sign admin "/O=system:masters/CN=kubernetes-admin" "extendedKeyUsage=clientAuth"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
sign controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
sign scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
sign kubelet-client "/O=system:nodes/CN=system:node:$node" "extendedKeyUsage=clientAuth"
sign kubelet-serving "/O=system:nodes/CN=system:node:$node" "extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
chmod 600 ./*.key; chmod 644 ./*.crt sa.pub
broker_certs
