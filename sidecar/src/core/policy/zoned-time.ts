// Local weekday and minute-of-day per IANA time zone, for input.time.zones. Formatters are built once per
// zone and the result is memoised per wall-clock minute, because every zone in use today has an offset
// in whole minutes: within one UTC minute the local weekday and minute cannot change.
import type { ZonedTime } from '@chaperone/api';

const WEEKDAY_NAMES: Readonly<Record<string, string>> = {
  Mon: 'Mon',
  Tue: 'Tue',
  Wed: 'Wed',
  Thu: 'Thu',
  Fri: 'Fri',
  Sat: 'Sat',
  Sun: 'Sun',
};

export class ZonedClock {
  private readonly formatters: readonly (readonly [string, Intl.DateTimeFormat])[];
  private minute = Number.NaN;
  private zones: Readonly<Record<string, ZonedTime>> = {};
  private json = '{}';

  /** @param zones IANA zone names; UTC is always added. Throws RangeError for an unknown zone. */
  constructor(zones: Iterable<string>) {
    const names = [...new Set(['UTC', ...zones])].sort();
    this.formatters = names.map(
      (zone) =>
        [
          zone,
          new Intl.DateTimeFormat('en-US', {
            timeZone: zone,
            weekday: 'short',
            hour: '2-digit',
            minute: '2-digit',
            hourCycle: 'h23',
          }),
        ] as const,
    );
  }

  get zoneNames(): readonly string[] {
    return this.formatters.map(([zone]) => zone);
  }

  /** Zones at unixMillis (memoised per minute). */
  at(unixMillis: number): Readonly<Record<string, ZonedTime>> {
    this.refresh(unixMillis);
    return this.zones;
  }

  /** The same as at(), already serialised as JSON. */
  jsonAt(unixMillis: number): string {
    this.refresh(unixMillis);
    return this.json;
  }

  private refresh(unixMillis: number): void {
    const minute = Math.floor(unixMillis / 60_000);
    if (minute === this.minute) return;
    const zones: Record<string, ZonedTime> = {};
    const date = new Date(minute * 60_000);
    for (const [zone, format] of this.formatters) {
      let weekday = '';
      let hour = 0;
      let min = 0;
      for (const part of format.formatToParts(date)) {
        if (part.type === 'weekday') weekday = WEEKDAY_NAMES[part.value] ?? part.value;
        else if (part.type === 'hour') hour = Number(part.value) % 24;
        else if (part.type === 'minute') min = Number(part.value);
      }
      zones[zone] = { weekday, minute: hour * 60 + min };
    }
    this.minute = minute;
    this.zones = zones;
    this.json = JSON.stringify(zones);
  }
}
