// How numbers and times are shown, in one place so every page agrees.

export function time(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

export function dateTime(seconds) {
  return new Date(seconds * 1000).toLocaleString([], { hour12: false });
}

export function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

export function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  const hours = Math.floor(s / 3600);
  if (hours < 48) return `${hours} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(hours / 24)} days`;
}

export function number(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

export function ago(msSinceEpoch) {
  if (!msSinceEpoch) return "never";
  return `${duration(Math.max(0, Date.now() - msSinceEpoch) / 1000)} ago`;
}
