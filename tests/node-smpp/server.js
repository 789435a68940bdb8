// A third-party SMSC for otpgate's conformance tests, built on node-smpp's server (npm `smpp`).
//
// Our own simulator shares our reading of SMPP; this one decodes every PDU with someone else's
// code. It prints one JSON line per event on stdout (the first is {"event":"listening","port":N}),
// answers binds, enquire_link and unbind, accepts each submit_sm with a message id and sends a
// delivery receipt for it (receipted_message_id and message_state TLVs plus the Appendix B text).
//
// Options (one JSON argument):
//   id_length    message ids are this many characters (default 8; 65 is one over SMPP's limit)
//   receipts     send a receipt for each submit (default true)
//   throttle_every  answer every n-th submit_sm with ESME_RTHROTTLED (0x58; default 0: never)
//   tls_cert, tls_key  serve SMPP over TLS (Node's tls module, OpenSSL) with these PEM files
//   tls_client_ca   require a client certificate signed by this PEM authority
//   tls_max_version cap the TLS version (e.g. "TLSv1.1", to play an outdated SMSC)
//   require_tlvs    [tags]: refuse a submit_sm without each of these vendor TLVs with
//                   require_status (an SMSC enforcing India's DLT)
'use strict';

const smpp = require('smpp');

const options = Object.assign({ id_length: 8, receipts: true, throttle_every: 0 }, JSON.parse(process.argv[2] || '{}'));
const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n');

const serverOptions = {};
if (options.tls_cert) {
  const fs = require('fs');
  Object.assign(serverOptions, { cert: fs.readFileSync(options.tls_cert), key: fs.readFileSync(options.tls_key) });
  if (options.tls_client_ca) {
    Object.assign(serverOptions, { ca: fs.readFileSync(options.tls_client_ca), requestCert: true, rejectUnauthorized: true });
  }
  if (options.tls_max_version) {
    // OpenSSL refuses TLS 1.0/1.1 at its default security level: lower it to play an old SMSC.
    Object.assign(serverOptions, { minVersion: 'TLSv1', maxVersion: options.tls_max_version, ciphers: 'DEFAULT:@SECLEVEL=0' });
  }
}

let nextId = 0x3000;
let submits = 0;

const server = smpp.createServer(serverOptions, (session) => {
  const bind = (pdu) => {
    emit({ event: pdu.command, system_id: pdu.system_id, password_length: (pdu.password || '').length, interface_version: pdu.interface_version });
    session.send(pdu.response());
  };
  session.on('bind_transceiver', bind);
  session.on('bind_transmitter', bind);
  session.on('bind_receiver', bind);
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    emit({ event: 'unbind' });
    session.send(pdu.response());
    session.close();
  });
  session.on('submit_sm', (pdu) => {
    submits += 1;
    const message = pdu.short_message && pdu.short_message.message !== undefined ? pdu.short_message.message : pdu.short_message;
    const fields = {
      event: 'submit_sm',
      service_type: pdu.service_type,
      source_addr_ton: pdu.source_addr_ton,
      source_addr_npi: pdu.source_addr_npi,
      source_addr: pdu.source_addr,
      dest_addr_ton: pdu.dest_addr_ton,
      dest_addr_npi: pdu.dest_addr_npi,
      destination_addr: pdu.destination_addr,
      esm_class: pdu.esm_class,
      protocol_id: pdu.protocol_id,
      priority_flag: pdu.priority_flag,
      schedule_delivery_time: pdu.schedule_delivery_time instanceof Date ? pdu.schedule_delivery_time.toISOString() : pdu.schedule_delivery_time,
      validity_period: pdu.validity_period instanceof Date ? pdu.validity_period.toISOString() : pdu.validity_period,
      registered_delivery: pdu.registered_delivery,
      replace_if_present_flag: pdu.replace_if_present_flag,
      data_coding: pdu.data_coding,
      sm_default_msg_id: pdu.sm_default_msg_id,
      text: String(message),
      // Long messages: the user data header's elements as node-smpp split them, the SAR TLVs,
      // or the whole text in message_payload.
      udh: pdu.short_message && pdu.short_message.udh ? pdu.short_message.udh.map((ie) => Array.from(ie)) : null,
      sar: pdu.sar_msg_ref_num === undefined ? null : [pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum],
      payload: pdu.message_payload === undefined ? null : String(pdu.message_payload.message !== undefined ? pdu.message_payload.message : pdu.message_payload),
      // Vendor TLVs (0x1400-0x3FFF): node-smpp keeps tags it does not know as raw buffers under
      // their number.
      vendor_tlvs: Object.keys(pdu)
        .filter((key) => /^[0-9]+$/.test(key) && Number(key) >= 0x1400 && Number(key) <= 0x3fff)
        .map((key) => [Number(key), Buffer.from(pdu[key]).toString('latin1')]),
    };
    const missing = (options.require_tlvs || []).filter((tag) => !fields.vendor_tlvs.some(([seen]) => seen === tag));
    if (missing.length > 0) {
      emit(Object.assign(fields, { status: options.require_status }));
      session.send(pdu.response({ command_status: options.require_status }));
      return;
    }
    if (options.throttle_every > 0 && submits % options.throttle_every === 0) {
      emit(Object.assign(fields, { status: 0x58 }));
      session.send(pdu.response({ command_status: 0x58 }));
      return;
    }
    nextId += 1;
    const messageId = nextId.toString(16).toUpperCase().padStart(options.id_length, '0');
    emit(Object.assign(fields, { status: 0, message_id: messageId }));
    session.send(pdu.response({ message_id: messageId }));
    if (!options.receipts) {
      return;
    }
    setTimeout(() => {
      const text = `id:${messageId} sub:001 dlvrd:001 submit date:2601010000 done date:2601010000 stat:DELIVRD err:000 text:`;
      session.deliver_sm({
        source_addr_ton: pdu.dest_addr_ton,
        source_addr_npi: pdu.dest_addr_npi,
        source_addr: pdu.destination_addr,
        dest_addr_ton: pdu.source_addr_ton,
        dest_addr_npi: pdu.source_addr_npi,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        data_coding: 0,
        short_message: Buffer.from(text, 'ascii'),
        receipted_message_id: messageId,
        message_state: 2,
      }, (resp) => emit({ event: 'deliver_sm_resp', message_id: messageId, status: resp.command_status }));
    }, 10);
  });
  session.on('error', (e) => emit({ event: 'session_error', error: String(e) }));
});

server.on('tlsClientError', (e) => emit({ event: 'tls_error', error: String(e) }));
server.on('secureConnection', (socket) => emit({ event: 'tls_connection', protocol: socket.getProtocol(), authorized: socket.authorized }));
server.listen(0, '127.0.0.1', () => emit({ event: 'listening', port: server.address().port }));
