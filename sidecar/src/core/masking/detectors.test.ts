// Each content detector with values it must find and look-alikes it must leave (docs/masking.md states the
// precision these cases pin down).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { ContentDetector } from '@chaperone/api';
import { ALL_DETECTORS, ibanValid, luhn, replaceDetected } from './detectors.ts';

const CASES: Record<ContentDetector, { readonly found: readonly string[]; readonly notFound: readonly string[] }> = {
  email: {
    found: ['ada@example.com', 'x mail first.last+tag@sub.example.co.uk y', 'Ops@Example.ORG'],
    notFound: ['ada at example dot com', 'user@localhost', '@handle', 'a@b'],
  },
  'credit-card': {
    found: ['4111 1111 1111 1111', '5500-0055-5555-5559', 'card 378282246310005 ok', '6011111111111117'],
    notFound: ['4111 1111 1111 1112', '1234567890123', 'order 20240101123456', '3.14159265358979'],
  },
  'us-ssn': {
    found: ['123-45-6789', 'ssn: 078-05-1121.'],
    notFound: ['000-12-3456', '666-12-3456', '900-12-3456', '123-00-4567', '123-45-0000', '1234-56-7890', '123456789'],
  },
  phone: {
    found: ['+1 415 555 2671', '(020) 7946 0958', '+44 20 7946 0958', '030-1234-5678'],
    notFound: ['version 1.2.3', 'id 12345', '2024-01-02'],
  },
  iban: {
    found: ['DE89370400440532013000', 'GB82 WEST 1234 5698 7654 32', 'pay FR1420041010050500013M02606 now'],
    notFound: ['DE89370400440532013001', 'GB82WEST12345698765433', 'AB12'],
  },
  ipv4: {
    found: ['10.1.2.3', 'from 192.168.0.254:5432', '8.8.8.8'],
    notFound: ['1.2.3', '256.1.1.1', '10.1.2.3.4', 'v1.2.3.4a'.slice(0, 6)],
  },
  ipv6: {
    found: ['2001:db8::1', 'fe80::1ff:fe23:4567:890a', '2001:0db8:85a3:0000:0000:8a2e:0370:7334'],
    notFound: ['12:30:45', 'a:b', 'ff::ff::1', 'time 10:20'],
  },
  jwt: {
    found: ['eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl'],
    notFound: ['eyJhbGciOiJIUzI1NiJ9', 'header.payload.signature', 'eyJ.eyJ.x'],
  },
  'secret-key': {
    found: [
      'AKIAIOSFODNN7EXAMPLE',
      'sk_live_4eC39HqLyjWDarjtT1zdp7dc',
      'ghp_0123456789abcdefghijABCDEFGHIJ012345',
      'glpat-abcdefghij0123456789',
      'xoxb-123456789012-abcdef',
      'AIzaSyA1234567890abcdefghijklmnopqrstuv',
      '-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----',
    ],
    notFound: ['AKIA1234', 'sk_demo_x', 'ghp_short', '-----BEGIN PUBLIC KEY-----', 'github.com/owner/repo'],
  },
};

describe('content detectors', () => {
  for (const detector of ALL_DETECTORS) {
    it(`${detector}: true and false positives`, () => {
      const cases = CASES[detector];
      for (const value of cases.found) {
        const r = replaceDetected(value, [detector], () => '#');
        assert.ok(r.count >= 1, `${detector} should find ${JSON.stringify(value)}`);
        assert.ok(r.text.includes('#'), r.text);
      }
      for (const value of cases.notFound) {
        const r = replaceDetected(value, [detector], () => '#');
        assert.equal(r.count, 0, `${detector} should not find ${JSON.stringify(value)} (got ${r.text})`);
        assert.equal(r.text, value);
      }
    });
  }

  it('checksums: Luhn and ISO 7064 mod 97', () => {
    assert.equal(luhn('4111111111111111'), true);
    assert.equal(luhn('4111111111111112'), false);
    assert.equal(ibanValid('DE89 3704 0044 0532 0130 00'), true);
    assert.equal(ibanValid('DE89 3704 0044 0532 0130 01'), false);
  });

  it('every detector at once keeps the text around what it replaces', () => {
    const r = replaceDetected('mail ada@example.com, card 4111 1111 1111 1111, ip 10.0.0.1.', ALL_DETECTORS, () => 'X');
    assert.equal(r.text, 'mail X, card X, ip X.');
    assert.equal(r.count, 3);
  });
});
